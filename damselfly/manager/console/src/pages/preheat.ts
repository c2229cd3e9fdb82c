// Preheat: place an image's (or a file's) blobs on seed peers or peers before anyone pulls
// it. The jobs, newest first, with how far each got; a form for a new one (root); one
// job's blobs and, for each, its hosts. Credentials go to the manager once and are never
// kept here: not in storage, not in the address, not in the form after it is sent.

import { api, ApiError, asList, idPath, type Cluster, type Id, type Job, type JobBlob, type JobHost } from "../api";
import type { Ctx, Page } from "../context";
import { confirmButton, dateCell, display, fill, formatBytes, h, stateBadge, type Child } from "../dom";
import { busy } from "./users";

/** A job in these states may still change (and be cancelled); the others are final. */
const ACTIVE = new Set(["PENDING", "RUNNING"]);
/** With no job running the list is read this often, for jobs started elsewhere; the shell polls every 3 s. */
const IDLE_MS = 30_000;
/** Jobs the list asks for: the newest this many. */
const SHOWN = 100;

export const SCOPES: Record<string, string> = {
  single_seed_peer: "One seed peer",
  all_seed_peers: "All seed peers",
  all_peers: "All peers",
};
const PLATFORMS = ["all", "linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "windows/amd64"];
const DEFAULT_TIMEOUT = 3600;

function isActive(job: Job): boolean {
  return ACTIVE.has(job.state);
}

function arg(job: Job, key: string): unknown {
  return job.args ? job.args[key] : undefined;
}

function jobHref(id: Id): string {
  return `#/preheat?job=${encodeURIComponent(String(id))}`;
}

/** "sha256:0123456789ab…": enough to tell blobs apart; the whole digest on hover. */
export function shortDigest(digest: string): string {
  const colon = digest.indexOf(":");
  const hex = colon < 0 ? digest : digest.slice(colon + 1);
  return hex.length > 12 ? `${digest.slice(0, colon + 1)}${hex.slice(0, 12)}…` : digest;
}

function scopeText(job: Job): string {
  const scope = typeof arg(job, "scope") === "string" ? String(arg(job, "scope")) : "single_seed_peer";
  const count = arg(job, "count");
  const percentage = arg(job, "percentage");
  const ips = arg(job, "ips");
  const narrowed = [
    typeof count === "number" ? `${count} peer${count === 1 ? "" : "s"}` : null,
    typeof percentage === "number" ? `${percentage}% of peers` : null,
    Array.isArray(ips) && ips.length ? `${ips.length} address${ips.length === 1 ? "" : "es"}` : null,
  ].filter(Boolean);
  return [scope.replace(/_/g, " "), ...narrowed].join(" · ");
}

interface Placement {
  done: number;
  failed: number;
  total: number;
}

/** Copies placed: each blob on each host meant to hold it counts once. */
function placement(hosts: JobHost[]): Placement {
  return {
    done: hosts.filter((x) => x.state === "done").length,
    failed: hosts.filter((x) => x.state === "failed").length,
    total: hosts.length,
  };
}

function allHosts(blobs: JobBlob[]): JobHost[] {
  return blobs.flatMap((b) => b.hosts ?? []);
}

function progressText(p: Placement, noun: string): Child {
  return [h("span", { class: "progress" }, h("progress", { max: p.total, value: p.done }), ` ${p.done}/${p.total} ${noun}`),
    p.failed ? h("span", { class: "error-text" }, `, ${p.failed} failed`) : null];
}

/** "12/14 placed": copies of the job's blobs on the hosts meant to hold them. */
function jobProgress(job: Job): Child {
  const blobs = job.blobs ?? [];
  const p = placement(allHosts(blobs));
  if (!p.total) {
    return h("span", { class: "muted" }, !blobs.length ? (isActive(job) ? "resolving…" : "—") : "no host chosen yet");
  }
  const hosts = new Set(allHosts(blobs).map((x) => x.host_id)).size;
  return h("span", { title: `${blobs.length} blob${blobs.length === 1 ? "" : "s"} on ${hosts} host${hosts === 1 ? "" : "s"}` },
    progressText(p, "placed"));
}

function cancelButton(ctx: Ctx, job: Job, onCancel: () => void): HTMLButtonElement {
  const button = confirmButton("Cancel job", "Really cancel?", () => {
    onCancel();
    void ctx.act(button, `cancel preheat job #${job.id}`, () => api.del(`/jobs/${idPath(job.id)}`),
      `Preheat job #${job.id} cancelled.`);
  });
  button.classList.add("cancel-job");
  return button;
}

/** The clusters by id, for names and the form's choice; read again after IDLE_MS, or at once after a failure. */
class Clusters {
  list: Cluster[] | null = null;
  problem: string | null = null;
  private readAt = 0;

  async load(): Promise<void> {
    if (this.list && Date.now() - this.readAt < IDLE_MS) return;
    try {
      this.list = asList<Cluster>(await api.get<unknown>("/clusters"));
      this.readAt = Date.now();
      this.problem = null;
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) throw err;
      this.problem = (err as Error).message;
    }
  }

  name(id: Id): string {
    const cluster = this.list?.find((c) => String(c.id) === String(id));
    return cluster ? `${cluster.name} (#${cluster.id})` : `#${id}`;
  }
}

// ---- the new-job form ------------------------------------------------------------------

let fieldCount = 0;

function labelled(label: string, input: HTMLElement, hint?: string, attrs: Record<string, unknown> = {}): HTMLElement {
  const id = input.id || `preheat-${++fieldCount}`;
  input.id = id;
  if (hint) input.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field", ...attrs }, h("label", { for: id }, label), input,
    hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null);
}

function select(name: string, options: [string, string][], value: string): HTMLSelectElement {
  const el = h("select", { name }, options.map(([v, text]) => h("option", { value: v }, text)));
  el.value = value;
  return el;
}

/** "Name: value" lines as a header object; a line that is not one is said by its number. */
function parseHeaders(text: string): Record<string, string> | string {
  const headers: Record<string, string> = {};
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon).trim() : "";
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) return `Header line ${i + 1}: write it as Name: value.`;
    headers[name] = line.slice(colon + 1).trim();
  }
  return headers;
}

interface NewJobForm {
  el: HTMLElement;
  showClusters(clusters: Clusters): void;
}

function newJobForm(ctx: Ctx, started: (job: Job) => void): NewJobForm {
  const url = h("input", { type: "text", name: "url", id: "preheat-url", required: true, autocomplete: "off",
    spellcheck: "false", placeholder: "registry.example/team/app:1.2" });
  const type = select("type", [["image", "Image"], ["file", "File"]], "image");
  const platform = h("input", { type: "text", name: "platform", value: "all", list: "preheat-platforms", autocomplete: "off",
    spellcheck: "false" });
  const platforms = h("datalist", { id: "preheat-platforms" }, PLATFORMS.map((p) => h("option", { value: p })));
  const digest = h("input", { type: "text", name: "digest", autocomplete: "off", spellcheck: "false", placeholder: "sha256:…" });
  const scope = select("scope", Object.entries(SCOPES), "single_seed_peer");
  const count = h("input", { type: "number", name: "count", min: 1, step: 1, placeholder: "all" });
  const percentage = h("input", { type: "number", name: "percentage", min: 1, max: 100, step: 1, placeholder: "all" });
  const ips = h("input", { type: "text", name: "ips", autocomplete: "off", spellcheck: "false", placeholder: "any" });
  const cluster = select("cluster", [["", "Every cluster"]], "");
  const timeout = h("input", { type: "number", name: "timeout", min: 1, step: 1, value: DEFAULT_TIMEOUT, required: true });
  const username = h("input", { type: "text", name: "username", autocomplete: "off", spellcheck: "false" });
  // new-password: the browser must not fill in the console's own password here.
  const password = h("input", { type: "password", name: "password", autocomplete: "new-password" });
  const headers = h("textarea", { name: "headers", rows: 2, spellcheck: "false", autocomplete: "off",
    placeholder: "X-Registry-Token: …" });
  const error = h("p", { class: "error-text", id: "preheat-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Start preheat");
  const clusterIds = new Map<string, Id>();
  let shownClusters = "";
  const clusterHint = h("small", { class: "hint", id: "preheat-cluster-hint" }, "Empty: every cluster.");
  cluster.id = "preheat-cluster";
  cluster.setAttribute("aria-describedby", clusterHint.id);

  const platformField = labelled("Platform", platform,
    "all (every platform an index lists), or os/arch[/variant] such as linux/amd64.");
  const digestField = labelled("Digest", digest, "The file's digest: every host checks the bytes against it.");
  const peersField = h("fieldset", { class: "peers" }, h("legend", null, "Which peers (optional)"),
    h("div", { class: "grid" },
      labelled("Count", count, "At most this many peers."),
      labelled("Percentage", percentage, "Or this share of them, 1–100."),
      labelled("IP addresses", ips, "Only peers at these addresses, separated by spaces or commas.")));
  const kind = () => {
    platformField.hidden = type.value !== "image";
    digestField.hidden = type.value !== "file";
    digest.required = type.value === "file";
    peersField.hidden = scope.value !== "all_peers";
    url.placeholder = type.value === "file" ? "http(s)://registry.example/v2/team/files/blobs/sha256:…"
      : "registry.example/team/app:1.2";
  };
  type.addEventListener("change", kind);
  scope.addEventListener("change", kind);
  kind();

  const say = (text: string) => {
    error.textContent = text;
    error.hidden = !text;
  };
  const forgetSecrets = () => {
    password.value = "";
    headers.value = "";
  };

  const form = h("form", { id: "new-preheat", class: "preheat-form", method: "post", autocomplete: "off" },
    h("div", { class: "grid" },
      labelled("Image or file", url, "An image reference (registry/repository:tag or @digest), or a file's blob URL "
        + "(http(s)://registry/v2/repository/blobs/sha256:…).",
        { class: "field wide" }),
      labelled("Type", type),
      platformField,
      digestField,
      labelled("Where", scope,
        "One seed peer: the least busy. All peers: every seed peer, then peers, which get each blob from the seeds."),
      h("div", { class: "field" }, h("label", { for: cluster.id }, "Cluster"), cluster, clusterHint),
      labelled("Timeout (seconds)", timeout, "The job fails if it has not placed everything by then.")),
    peersField,
    h("details", { class: "credentials", id: "preheat-credentials" }, h("summary", null, "Private registry (optional)"),
      h("div", { class: "grid" },
        labelled("Username", username),
        labelled("Password", password, "Sent once; the manager never shows it, and this page forgets it once sent."),
        labelled("Headers", headers, "Name: value, one a line; their values are never shown either.",
          { class: "field wide" }))),
    platforms, error,
    h("div", { class: "buttons" }, submit));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    say("");
    const args: Record<string, unknown> = { type: type.value, url: url.value.trim(), scope: scope.value,
      timeout: timeout.value === "" ? DEFAULT_TIMEOUT : Number(timeout.value) };
    if (type.value === "image") args.platform = platform.value.trim() || "all";
    if (type.value === "file" && digest.value.trim()) args.digest = digest.value.trim();
    if (scope.value === "all_peers") {
      if (count.value !== "") args.count = Number(count.value);
      if (percentage.value !== "") args.percentage = Number(percentage.value);
      const addresses = ips.value.split(/[\s,]+/).filter(Boolean);
      if (addresses.length) args.ips = addresses;
    }
    if (username.value.trim()) args.username = username.value.trim();
    if (password.value) args.password = password.value;
    const parsed = parseHeaders(headers.value);
    if (typeof parsed === "string") {
      say(parsed);
      headers.focus();
      return;
    }
    if (Object.keys(parsed).length) args.headers = parsed;
    const chosen = clusterIds.get(cluster.value);
    const body = { type: "preheat", args, ...(chosen !== undefined ? { cluster_ids: [chosen] } : {}) };
    let created: Job | null = null;
    let refused: string | null = null;
    void ctx.act(submit, "start the preheat", async () => {
      try {
        created = await api.post<Job>("/jobs", body);
      } catch (err) {
        // The manager's refusal goes under the form, in its words; a lost session still signs out.
        if (err instanceof ApiError && !err.unauthorized) refused = err.message;
        else throw err;
      } finally {
        forgetSecrets();
      }
    }).then(() => {
      if (refused !== null) {
        say(refused);
        url.focus();
        return;
      }
      const job = created as Job | null;
      if (!job) return;
      ctx.notify(`Preheat job #${job.id} started for ${display(arg(job, "url") ?? args.url)}.`);
      url.value = "";
      digest.value = "";
      started(job);
    });
  });

  return {
    el: form,
    showClusters(clusters: Clusters): void {
      clusterHint.textContent = clusters.problem ? `Could not list the clusters (${clusters.problem}); every cluster, or try later.`
        : "Every cluster, or only one.";
      const key = JSON.stringify(clusters.list?.map((c) => [c.id, c.name]) ?? null);
      if (!clusters.list || key === shownClusters || document.activeElement === cluster) return;
      shownClusters = key;
      const value = cluster.value;
      clusterIds.clear();
      fill(cluster, h("option", { value: "" }, "Every cluster"), clusters.list.map((c) => {
        clusterIds.set(String(c.id), c.id);
        return h("option", { value: String(c.id) }, `${c.name} (#${c.id})`);
      }));
      cluster.value = clusterIds.has(value) ? value : "";
    },
  };
}

// ---- the list --------------------------------------------------------------------------

function jobsTable(ctx: Ctx, jobs: Job[], onCancel: () => void): HTMLElement {
  const head = ["Job", "Image or file", "Where", "State", "Progress", "By", "Created", ""];
  return h("div", { class: "table-wrap" }, h("table", { id: "jobs-table", class: "jobs" },
    h("thead", null, h("tr", null, head.map((c) => h("th", null, c)))),
    h("tbody", null, jobs.map((job) => h("tr", { "data-job-id": String(job.id), "data-state": job.state },
      h("td", null, h("a", { href: jobHref(job.id), "aria-label": `Preheat job ${job.id}` }, `#${job.id}`)),
      h("td", { class: "url" }, h("code", null, display(arg(job, "url"))),
        arg(job, "type") === "file" ? h("span", { class: "badge tag" }, "file") : null),
      h("td", null, scopeText(job)),
      h("td", null, stateBadge(job.state),
        job.error ? h("div", { class: "job-error error-text", title: job.error }, job.error) : null),
      h("td", null, jobProgress(job)),
      h("td", null, display(job.created_by)),
      h("td", null, dateCell(job.created_at ?? null)),
      h("td", { class: "actions" }, ctx.isRoot && isActive(job) ? cancelButton(ctx, job, onCancel) : null))))),
  jobs.length >= SHOWN ? h("p", { class: "muted" }, `The newest ${SHOWN} jobs.`) : null);
}

function listPage(ctx: Ctx): Page {
  const clusters = new Clusters();
  const table = h("div", { class: "jobs-list" }, h("p", { class: "muted" }, "Loading the jobs…"));
  const checked = h("p", { class: "muted checked", id: "jobs-checked" });
  // Read the list at the next tick whatever its state: after this page started or cancelled a job.
  let stale = true;
  const form = ctx.isRoot ? newJobForm(ctx, () => { stale = true; }) : null;

  const el = h("div", { class: "page preheat-page" },
    h("div", { class: "page-head" }, h("h1", null, "Preheat")),
    h("p", { class: "lede" }, "Place an image's blobs (or a file) on seed peers or peers before anyone pulls it, ",
      "so the first pull is served from the cluster instead of the registry."),
    form ? h("section", { class: "card", id: "new-preheat-card" }, h("h2", null, "New preheat"), form.el) : null,
    h("section", { class: "card" }, h("h2", null, "Jobs"), table, checked));

  let last = "";
  let active = false;
  let readAt = 0;

  async function refresh(): Promise<void> {
    if (form) {
      await clusters.load();
      form.showClusters(clusters);
    }
    if (!stale && !active && Date.now() - readAt < IDLE_MS) return;
    const jobs = asList<Job>(await api.get<unknown>(`/jobs?limit=${SHOWN}`));
    stale = false;
    readAt = Date.now();
    active = jobs.some(isActive);
    checked.textContent = `Read at ${new Date(readAt).toLocaleTimeString()}; again every 3 s while a job is pending or running, `
      + `every ${IDLE_MS / 1000} s otherwise.`;
    const key = JSON.stringify(jobs);
    // Not while a Cancel button is armed or focus is in the table: a redraw would lose it.
    if (key === last || busy(table) || table.querySelector(".armed")) return;
    last = key;
    fill(table, jobs.length ? jobsTable(ctx, jobs, () => { stale = true; })
      : h("p", { class: "empty" }, ctx.isRoot ? "No preheat jobs yet. Start one above." : "No preheat jobs yet."));
  }

  return { title: "Preheat", el, refresh };
}

// ---- one job ---------------------------------------------------------------------------

function fact(label: string, value: Child, key: string): HTMLElement {
  return h("div", { "data-key": key }, h("dt", null, label), h("dd", null, value));
}

function facts(job: Job, clusters: Clusters): HTMLElement {
  const a = (key: string) => arg(job, key);
  const ids = job.cluster_ids ?? [];
  return h("dl", { class: "facts job-facts" },
    fact("Image or file", h("code", null, display(a("url"))), "url"),
    fact("Type", display(a("type")), "type"),
    a("type") !== "file" ? fact("Platform", display(a("platform") ?? "all"), "platform") : null,
    a("digest") ? fact("Digest", h("code", null, display(a("digest"))), "digest") : null,
    fact("Where", scopeText(job), "scope"),
    Array.isArray(a("ips")) && (a("ips") as unknown[]).length ? fact("IP addresses", display(a("ips")), "ips") : null,
    fact("Clusters", ids.length ? ids.map((id) => clusters.name(id)).join(", ") : "every cluster", "clusters"),
    fact("Timeout", typeof a("timeout") === "number" ? `${a("timeout")} s` : "—", "timeout"),
    fact("Credentials", a("private") ? "given, never shown" : "none", "private"),
    fact("Created by", display(job.created_by), "created_by"),
    fact("Created", dateCell(job.created_at ?? null), "created_at"),
    fact("Updated", dateCell(job.updated_at ?? null), "updated_at"),
    job.error ? fact("Error", h("span", { class: "error-text", id: "job-error" }, job.error), "error") : null);
}

function hostsTable(hosts: JobHost[]): HTMLElement {
  const order = (a: JobHost, b: JobHost) => a.host_id.localeCompare(b.host_id);
  return h("table", { class: "hosts" },
    h("thead", null, h("tr", null, ["Host", "State", "Error"].map((c) => h("th", null, c)))),
    h("tbody", null, [...hosts].sort(order).map((x) => h("tr", { "data-host-id": x.host_id },
      h("td", null, x.host_id),
      h("td", null, stateBadge(x.state)),
      h("td", null, x.error ? h("span", { class: "error-text" }, x.error) : "—")))));
}

let blobCount = 0;

/** One blob: a row, and below it its hosts, shown or hidden by its button (kept across redraws by ``open``). */
function blobRows(blob: JobBlob, clusters: Clusters, open: Set<string>, multiCluster: boolean): HTMLElement {
  const key = `${blob.cluster_id ?? ""}|${blob.digest}`;
  const hosts = blob.hosts ?? [];
  const p = placement(hosts);
  const id = `blob-hosts-${++blobCount}`;
  const hostsRow = h("tr", { class: "hosts-row", id, hidden: !open.has(key) },
    h("td", { colspan: multiCluster ? 6 : 5 },
      hosts.length ? hostsTable(hosts) : h("p", { class: "empty" }, "No host has been asked for it yet.")));
  const toggle = h("button", { type: "button", class: "link toggle", "aria-controls": id,
    "aria-expanded": String(open.has(key)) }, open.has(key) ? "Hide hosts" : "Show hosts");
  toggle.addEventListener("click", () => {
    const show = hostsRow.hidden;
    hostsRow.hidden = !show;
    toggle.setAttribute("aria-expanded", String(show));
    toggle.textContent = show ? "Hide hosts" : "Show hosts";
    if (show) open.add(key);
    else open.delete(key);
  });
  return h("tbody", { "data-digest": blob.digest, "data-cluster-id": String(blob.cluster_id ?? "") },
    h("tr", { class: "blob-row" },
      h("td", null, h("code", { title: blob.digest }, shortDigest(blob.digest))),
      h("td", null, display(blob.kind ?? "blob")),
      h("td", { class: "num" }, typeof blob.size === "number"
        ? h("span", { title: `${blob.size} bytes` }, formatBytes(blob.size)) : "—"),
      multiCluster ? h("td", null, blob.cluster_id === undefined || blob.cluster_id === null ? "—"
        : clusters.name(blob.cluster_id)) : null,
      h("td", { class: "hosts-done" }, p.total ? progressText(p, "hosts done") : h("span", { class: "muted" }, "no host yet")),
      h("td", { class: "actions" }, toggle)),
    hostsRow);
}

function blobsTable(job: Job, clusters: Clusters, open: Set<string>): HTMLElement {
  const blobs = job.blobs ?? [];
  if (!blobs.length) {
    return h("p", { class: "empty" }, isActive(job)
      ? "The manager is still reading what the image is made of." : "The job placed nothing.");
  }
  const multi = new Set(blobs.map((b) => String(b.cluster_id ?? ""))).size > 1;
  const whole = blobs.filter((b) => (b.hosts ?? []).length > 0 && (b.hosts ?? []).every((x) => x.state === "done")).length;
  const size = blobs.reduce((n, b) => n + (typeof b.size === "number" ? b.size : 0), 0);
  return h("div", null,
    h("p", { class: "muted", id: "blobs-summary" }, `${whole} of ${blobs.length} on every host meant to hold them; `,
      `${formatBytes(size)} in all.`),
    h("div", { class: "table-wrap" }, h("table", { class: "job-blobs", id: "job-blobs" },
      h("thead", null, h("tr", null, ["Digest", "Kind", "Size", multi ? "Cluster" : null, "Hosts", ""]
        .filter((c): c is string => c !== null).map((c) => h("th", c === "Size" ? { class: "num" } : null, c)))),
      blobs.map((b) => blobRows(b, clusters, open, multi)))));
}

function jobPage(ctx: Ctx, id: string): Page {
  const clusters = new Clusters();
  const badge = h("span", { class: "job-state", id: "job-state" });
  const actions = h("div", { class: "actions" });
  const about = h("div", { class: "job-about" }, h("p", { class: "muted" }, "Loading the job…"));
  const blobs = h("div", { class: "job-blobs-wrap" });
  const blobsCard = h("section", { class: "card" }, h("h2", null, "Blobs"), blobs);
  const open = new Set<string>();
  const el = h("div", { class: "page preheat-page job-page", "data-job-id": id },
    h("p", { class: "back" }, h("a", { href: "#/preheat" }, "← All preheat jobs")),
    h("div", { class: "page-head" }, h("h1", null, `Preheat job #${id} `, badge), actions),
    h("section", { class: "card" }, about),
    blobsCard);

  let job: Job | null = null;
  let gone = false;
  let stale = false;
  let last = "";

  async function refresh(): Promise<void> {
    // A job that ended stays as it is: read once more only after this page cancelled it.
    if (gone || (job && !isActive(job) && !stale)) return;
    await clusters.load();
    let answer: Job;
    try {
      answer = await api.get<Job>(`/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      // No such job (or no job id at all): asking again will not change that.
      if (err instanceof ApiError && err.status >= 400 && err.status < 500 && !err.unauthorized && !err.forbidden) {
        gone = true;
        fill(about, h("p", { class: "error-text" }, `No preheat job #${id}: ${err.message}`));
        blobsCard.hidden = true;
        return;
      }
      throw err;
    }
    job = answer;
    stale = false;
    const key = JSON.stringify(answer);
    if (key === last || actions.querySelector(".armed")) return;
    last = key;
    fill(badge, stateBadge(answer.state));
    fill(actions, ctx.isRoot && isActive(answer) ? cancelButton(ctx, answer, () => { stale = true; }) : null);
    fill(about, facts(answer, clusters));
    fill(blobs, blobsTable(answer, clusters, open));
  }

  return { title: `Preheat job #${id}`, el, refresh };
}

export function preheatPage(ctx: Ctx, query: URLSearchParams): Page {
  const id = query.get("job");
  return id ? jobPage(ctx, id) : listPage(ctx);
}
