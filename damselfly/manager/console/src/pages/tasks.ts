// Where is a blob? Which peers hold a digest or an image and how far each got, live.

import { api, ApiError } from "../api";
import { renderAny } from "../autotable";
import type { Ctx, Page } from "../context";
import { display, fill, h, type Child } from "../dom";

interface TaskPeer {
  host_id: string;
  upload_url?: string | null;
  pieces?: number;
  piece_count?: number | null;
  done?: boolean;
  scheduler_url?: string;
}

interface TasksAnswer {
  image?: string | null;
  blobs: { digest: string; peers: TaskPeer[] }[];
  schedulers?: { url: string; cluster_id?: number | null; error?: string | null }[];
}

function isTasksAnswer(value: unknown): value is TasksAnswer {
  const v = value as TasksAnswer | null;
  return !!v && typeof v === "object" && Array.isArray(v.blobs) &&
    v.blobs.every((b) => b && typeof b.digest === "string" && Array.isArray(b.peers));
}

function progress(peer: TaskPeer): Child {
  const have = typeof peer.pieces === "number" ? peer.pieces : null;
  const total = typeof peer.piece_count === "number" && peer.piece_count > 0 ? peer.piece_count : null;
  if (peer.done) return h("span", { class: "progress" }, h("progress", { max: 1, value: 1 }), " whole blob");
  if (have !== null && total !== null) {
    return h("span", { class: "progress" }, h("progress", { max: total, value: have }), ` ${have} of ${total} pieces`);
  }
  return have !== null ? `${have} pieces` : "—";
}

function peersTable(peers: TaskPeer[]): HTMLElement {
  const order = (a: TaskPeer, b: TaskPeer) => Number(!!b.done) - Number(!!a.done) || (b.pieces ?? 0) - (a.pieces ?? 0);
  return h("div", { class: "table-wrap" }, h("table", null,
    h("thead", null, h("tr", null, ["Peer", "Progress", "Upload URL", "Scheduler"].map((c) => h("th", null, c)))),
    h("tbody", null, [...peers].sort(order).map((p) => h("tr", null,
      h("td", null, display(p.host_id)),
      h("td", null, progress(p)),
      h("td", null, h("code", null, display(p.upload_url))),
      h("td", null, h("code", null, display(p.scheduler_url))))))));
}

/** The manager's answer: each blob with the peers that hold it, then which schedulers answered. */
function renderTasks(answer: TasksAnswer): HTMLElement {
  const holders = answer.blobs.reduce((n, b) => n + b.peers.length, 0);
  const schedulers = answer.schedulers ?? [];
  const blobs = answer.blobs.length;
  return h("div", { class: "tasks" },
    answer.image ? h("p", null, "Image ", h("code", null, answer.image), `: ${blobs} blob${blobs === 1 ? "" : "s"}.`) : null,
    !holders ? h("p", { class: "empty" }, "No peer holds it (yet).") : null,
    holders ? answer.blobs.map((blob) => h("div", { class: "blob", "data-digest": blob.digest },
      h("h3", null, h("code", null, blob.digest), " ", h("span", { class: "count" }, blob.peers.length
        ? `${blob.peers.filter((p) => p.done).length} of ${blob.peers.length} peers hold all of it`
        : "no peer holds it yet")),
      blob.peers.length ? peersTable(blob.peers) : null)) : null,
    h("div", { class: "asked" },
      h("h3", null, "Schedulers asked"),
      schedulers.length
        ? h("ul", null, schedulers.map((s) => h("li", null, h("code", null, s.url), " — ",
          s.error ? h("span", { class: "error-text" }, `no answer: ${s.error}`) : "answered")))
        : h("p", { class: "muted" }, "None: no scheduler is active in any cluster, so no peer could be asked about.")));
}

const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;

export function isDigest(text: string): boolean {
  return DIGEST.test(text);
}

export function tasksPage(_ctx: Ctx, query: URLSearchParams): Page {
  const input = h("input", {
    type: "search", name: "q", value: query.get("q") ?? "", autocomplete: "off", spellcheck: "false",
    placeholder: "sha256:… or registry.example/team/app:1.2",
    "aria-label": "Digest or image reference",
  });
  const plain = h("input", { type: "checkbox", id: "plain-http", name: "plain_http", checked: query.get("plain") === "1" });
  const plainLabel = h("span", { class: "check", title: "Read the image's manifest from its registry over plain HTTP" },
    plain, h("label", { for: "plain-http" }, "registry over plain HTTP"));
  const kind = h("small", { class: "hint" });
  const result = h("div", { class: "result card" });
  const form = h("form", { class: "inline-form search", id: "task-search" }, input, plainLabel,
    h("button", { type: "submit", class: "primary" }, "Search"));
  const describe = () => {
    const q = input.value.trim();
    kind.textContent = !q ? "A blob digest, or an image reference (name:tag or name@digest)."
      : isDigest(q) ? "Searching by digest." : "Searching by image reference: the manager reads its manifest, then asks for each layer.";
    plainLabel.hidden = !q || isDigest(q);
  };
  input.addEventListener("input", describe);
  describe();

  // ``refused``: the manager answered this search with a 4xx, which asking again will not change.
  let current = { q: input.value.trim(), plain: plain.checked, refused: false };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    current = { q: input.value.trim(), plain: plain.checked, refused: false };
    const params = new URLSearchParams();
    if (current.q) params.set("q", current.q);
    if (current.q && current.plain && !isDigest(current.q)) params.set("plain", "1");
    history.replaceState(null, "", `#/tasks${params.toString() ? `?${params}` : ""}`);
    fill(result, h("p", { class: "muted" }, "Asking the schedulers…"));
    void page.refresh().catch(() => undefined);
  });

  const el = h("div", { class: "page tasks-page" },
    h("div", { class: "page-head" }, h("h1", null, "Tasks")),
    h("p", { class: "lede" }, "Which peers hold a blob or an image, and how far each got. The answer refreshes while you watch."),
    form, kind, result);

  const page: Page = {
    title: "Tasks",
    el,
    async refresh(): Promise<void> {
      const asked = current;
      if (!asked.q) {
        fill(result, h("p", { class: "muted" }, "Search for a digest or an image reference to see where it is."));
        return;
      }
      if (asked.refused) return;
      const byDigest = isDigest(asked.q);
      const params = new URLSearchParams({ [byDigest ? "digest" : "image"]: asked.q });
      if (!byDigest && asked.plain) params.set("plain_http", "true");
      let answer: unknown;
      try {
        answer = await api.get<unknown>(`/tasks?${params}`);
      } catch (err) {
        if (asked !== current) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && !err.unauthorized) {
          asked.refused = true;
          fill(result, h("p", { class: "error-text" }, err.message));
          return;
        }
        fill(result, h("p", { class: "error-text" }, `${(err as Error).message} Asking again in a few seconds.`));
        throw err;
      }
      if (asked !== current) return; // a newer search replaced this one
      fill(result,
        h("p", { class: "muted" }, `As of ${new Date().toLocaleTimeString()}, asked by ${byDigest ? "digest" : "image reference"}.`),
        isTasksAnswer(answer) ? renderTasks(answer) : renderAny(answer, {
          preferred: ["state", "host_id", "peer_id", "hostname", "url", "idc", "location", "progress", "finished_pieces",
            "total_pieces", "completed_bytes", "content_length", "updated_at"],
          times: "relative",
        }, "No peer holds it (yet)."));
    },
  };
  return page;
}
