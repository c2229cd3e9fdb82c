// Clusters: each with its configuration, scopes, schedulers, seed peers and peers, live.

import { api, asList, idPath, type Cluster, type Component } from "../api";
import type { Ctx, Page } from "../context";
import { confirmButton, display, fill, formatBytes, h, humanize, stateBadge, timeCell } from "../dom";

/**
 * How each known key of a cluster's configuration and scopes reads and is edited. An
 * empty box sends null, which each key says the meaning of (no cap, no limit, any host).
 */
interface Spec {
  label: string;
  help: string;
  kind: "number" | "text" | "lines";
  /** What null means, said in the summary and under an empty box; absent: a value is required. */
  unset?: string;
  min?: number;
  max?: number;
  show?: (value: number) => string;
}

const CONFIG: Record<string, Spec> = {
  upload_rate: { label: "Upload rate", kind: "number", min: 1, unset: "no cap",
    help: "Bytes per second each peer uploads at most.", show: (v) => `${formatBytes(v)}/s` },
  upload_slots: { label: "Upload slots", kind: "number", min: 1, max: 4096, unset: "each peer's own",
    help: "Pieces a peer uploads at once." },
  candidate_parent_limit: { label: "Candidate parents", kind: "number", min: 1, max: 64,
    help: "Parents a scheduler offers a peer at once." },
  back_to_source: { label: "Back to source", kind: "number", min: 0, unset: "no limit",
    help: "How many peers of one task may go to the registry themselves.",
    show: (v) => (v === 0 ? "none" : `at most ${v} peer${v === 1 ? "" : "s"}`) },
  block_list: { label: "Block list", kind: "lines",
    help: "Image references or digests that must not be served, one a line." },
};
const SCOPES: Record<string, Spec> = {
  idc: { label: "IDC", kind: "text", unset: "any", help: "Data centres, separated by |; a host in any of them belongs here." },
  location: { label: "Location", kind: "text", unset: "any", help: "A location prefix such as country|city: hosts there and below." },
  cidrs: { label: "CIDRs", kind: "lines", help: "Networks, one a line; a host whose address is in one belongs here." },
};

function specOf(key: string, specs: Record<string, Spec>, value: unknown): Spec {
  return specs[key] ?? {
    label: humanize(key), help: "",
    kind: Array.isArray(value) ? "lines" : typeof value === "number" ? "number" : "text",
    unset: "not set",
  };
}

function valueText(spec: Spec, value: unknown): string {
  if (value === null || value === undefined || value === "") return spec.unset ?? "—";
  if (Array.isArray(value)) return value.length ? `${value.length} entr${value.length === 1 ? "y" : "ies"}` : "empty";
  if (typeof value === "number" && spec.show) return spec.show(value);
  return display(value);
}

function scopeText(scopes: Record<string, unknown> | null | undefined): string {
  const parts = Object.entries(scopes ?? {})
    .filter(([, v]) => v !== null && v !== undefined && v !== "" && !(Array.isArray(v) && v.length === 0))
    .map(([k, v]) => `${specOf(k, SCOPES, v).label} ${display(v)}`);
  return parts.length ? parts.join(" · ") : "every host (no scopes)";
}

/** One form field; ``read`` gives what goes in the PATCH body. */
interface Field {
  el: HTMLElement;
  read(): unknown;
}

let fieldCount = 0;

function field(key: string, value: unknown, spec: Spec): Field {
  const id = `field-${key}-${++fieldCount}`;
  const hint = [spec.help, spec.unset ? `Empty: ${spec.unset}.` : ""].filter(Boolean).join(" ");
  const wrap = (input: HTMLElement) =>
    h("div", { class: "field" }, h("label", { for: id }, spec.label), input, hint ? h("small", { class: "hint" }, hint) : null);
  if (spec.kind === "lines") {
    const area = h("textarea", { id, name: key, rows: 3, spellcheck: "false" });
    area.value = Array.isArray(value) ? value.map(String).join("\n") : "";
    return { el: wrap(area), read: () => area.value.split("\n").map((s) => s.trim()).filter(Boolean) };
  }
  if (spec.kind === "number") {
    const input = h("input", { type: "number", id, name: key, value: typeof value === "number" ? value : "", step: 1,
      min: spec.min, max: spec.max, required: !spec.unset, placeholder: spec.unset ?? "" });
    return { el: wrap(input), read: () => (input.value === "" ? null : Number(input.value)) };
  }
  const input = h("input", { type: "text", id, name: key, value: value ?? "", placeholder: spec.unset ?? "",
    spellcheck: "false" });
  return { el: wrap(input), read: () => (input.value.trim() === "" ? null : input.value.trim()) };
}

function byState(a: Component, b: Component): number {
  const active = (c: Component) => (c.state === "active" ? 0 : 1);
  return active(a) - active(b) || String(a.host_id ?? a.id).localeCompare(String(b.host_id ?? b.id));
}

function componentTable(kind: string, title: string, rows: Component[], withBytes: boolean): HTMLElement {
  const active = rows.filter((r) => r.state === "active").length;
  const heading = h("h3", null, title, " ", h("span", { class: "count" }, `${active} of ${rows.length} active`));
  if (!rows.length) {
    return h("div", { class: "components", "data-kind": kind }, heading,
      h("p", { class: "empty" }, `No ${title.toLowerCase()} have registered in this cluster.`));
  }
  const head = ["State", "Host", "URL", "IDC", "Location", "Last keepalive", ...(withBytes ? ["Uploaded", "Served"] : [])];
  return h("div", { class: "components", "data-kind": kind }, heading,
    h("div", { class: "table-wrap" },
      h("table", null,
        h("thead", null, h("tr", null, head.map((c, i) => h("th", i >= 6 ? { class: "num" } : null, c)))),
        h("tbody", null, [...rows].sort(byState).map((r) =>
          h("tr", { class: r.state === "active" ? "" : "inactive", "data-id": String(r.id) },
            h("td", null, stateBadge(r.state)),
            h("td", null, display(r.host_id ?? r.hostname ?? r.id)),
            h("td", null, h("code", null, display(r.url))),
            h("td", null, display(r.idc)),
            h("td", null, display(r.location)),
            h("td", null, timeCell(r.last_keepalive_at)),
            withBytes && h("td", { class: "num" }, formatBytes(r.uploaded_bytes)),
            withBytes && h("td", { class: "num" }, formatBytes(r.served_bytes)),
          ))))));
}

interface Members {
  schedulers: Component[];
  seedPeers: Component[];
  peers: Component[];
}

/** One cluster's section. Polling redraws its summary and tables, never an open edit form. */
class ClusterView {
  readonly el: HTMLElement;
  private readonly title = h("h2");
  private readonly scopes = h("p", { class: "scopes" });
  private readonly config = h("dl", { class: "config" });
  private readonly actions = h("div", { class: "actions" });
  private readonly editor = h("div", { class: "editor" });
  private readonly members = h("div", { class: "members" });
  private cluster: Cluster;

  constructor(private readonly ctx: Ctx, cluster: Cluster) {
    this.cluster = cluster;
    this.el = h("section", { class: "cluster card", "data-cluster-id": String(cluster.id) },
      h("header", null, h("div", null, this.title, this.scopes), this.actions),
      this.config, this.editor, this.members);
    if (ctx.isRoot) {
      fill(this.actions,
        h("button", { type: "button", class: "edit", onclick: () => this.openEditor() }, "Edit"),
        confirmButton("Delete", "Really delete?", () => void this.remove()));
    }
  }

  update(cluster: Cluster, members: Members | null): void {
    this.cluster = cluster;
    this.el.dataset.name = cluster.name;
    fill(this.title, cluster.name, " ", h("span", { class: "id" }, `#${cluster.id}`));
    this.scopes.textContent = `Hosts: ${scopeText(cluster.scopes)}`;
    fill(this.config, Object.entries(cluster.config ?? {}).map(([k, v]) => {
      const spec = specOf(k, CONFIG, v);
      return h("div", { title: Array.isArray(v) && v.length ? v.join("\n") : spec.help, "data-key": k },
        h("dt", null, spec.label), h("dd", null, valueText(spec, v)));
    }));
    if (members) {
      // Redrawn every poll: "12 s ago" moves even when nothing else does.
      fill(this.members,
        componentTable("schedulers", "Schedulers", members.schedulers, false),
        componentTable("seed-peers", "Seed peers", members.seedPeers, true),
        componentTable("peers", "Peers", members.peers, true));
    }
  }

  private openEditor(): void {
    const c = this.cluster;
    const name = field("name", c.name, { label: "Name", kind: "text", help: "Letters, digits and . _ @ -, up to 64." });
    const scopes = Object.entries(c.scopes ?? {}).map(([k, v]) => [k, field(k, v, specOf(k, SCOPES, v))] as const);
    const config = Object.entries(c.config ?? {}).map(([k, v]) => [k, field(k, v, specOf(k, CONFIG, v))] as const);
    const save = h("button", { type: "submit", class: "primary" }, "Save");
    const form = h("form", { class: "edit-cluster" },
      h("fieldset", null, h("legend", null, "Name"), name.el),
      scopes.length ? h("fieldset", null, h("legend", null, "Which hosts belong here"), scopes.map(([, f]) => f.el)) : null,
      config.length ? h("fieldset", null, h("legend", null, "Configuration (peers and schedulers pick it up within a minute)"),
        config.map(([, f]) => f.el)) : null,
      h("div", { class: "buttons" }, save,
        h("button", { type: "button", onclick: () => this.closeEditor() }, "Cancel")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const body: Record<string, unknown> = {
        name: name.read(),
        ...(scopes.length ? { scopes: Object.fromEntries(scopes.map(([k, f]) => [k, f.read()])) } : {}),
        ...(config.length ? { config: Object.fromEntries(config.map(([k, f]) => [k, f.read()])) } : {}),
      };
      void this.ctx.act(save, `save cluster “${c.name}”`, () => api.patch(`/clusters/${idPath(c.id)}`, body),
        `Cluster “${String(body.name)}” saved.`).then((ok) => ok && this.closeEditor());
    });
    this.el.classList.add("editing");
    fill(this.editor, form);
  }

  private closeEditor(): void {
    this.el.classList.remove("editing");
    this.editor.replaceChildren();
    this.ctx.refreshSoon();
  }

  private async remove(): Promise<void> {
    const c = this.cluster;
    await this.ctx.act(null, `delete cluster “${c.name}”`, () => api.del(`/clusters/${idPath(c.id)}`),
      `Cluster “${c.name}” deleted.`);
  }
}

function tile(label: string, value: string, detail: string): HTMLElement {
  return h("div", { class: "tile" }, h("div", { class: "tile-value" }, value), h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-detail" }, detail));
}

export function clustersPage(ctx: Ctx): Page {
  const summary = h("div", { class: "tiles" });
  const list = h("div", { class: "clusters" });
  const unassigned = h("div", { class: "unassigned" });
  const views = new Map<string, ClusterView>();

  let create: HTMLElement | null = null;
  if (ctx.isRoot) {
    const input = h("input", { type: "text", name: "name", placeholder: "name of a new cluster", required: true,
      autocomplete: "off", spellcheck: "false", "aria-label": "Name of the new cluster" });
    const button = h("button", { type: "submit", class: "primary" }, "Create cluster");
    create = h("form", { class: "inline-form", id: "create-cluster" }, input, button);
    create.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = input.value.trim();
      if (!name) return;
      void ctx.act(button, `create cluster “${name}”`, () => api.post("/clusters", { name }),
        `Cluster “${name}” created; it takes every host until you give it scopes.`).then((ok) => {
        if (ok) input.value = "";
      });
    });
  }

  const el = h("div", { class: "page clusters-page" },
    h("div", { class: "page-head" }, h("h1", null, "Clusters"), create),
    summary, list, unassigned);

  async function refresh(): Promise<void> {
    const [clusters, schedulers, seedPeers, peers] = await Promise.all([
      api.get<unknown>("/clusters").then((v) => asList<Cluster>(v)),
      api.get<unknown>("/schedulers").then((v) => asList<Component>(v)),
      api.get<unknown>("/seed-peers").then((v) => asList<Component>(v)),
      api.get<unknown>("/peers").then((v) => asList<Component>(v)),
    ]);
    const of = (rows: Component[], id: unknown) => rows.filter((r) => String(r.cluster_id) === String(id));
    const count = (rows: Component[]) => `${rows.filter((r) => r.state === "active").length} of ${rows.length} active`;
    fill(summary,
      tile("Clusters", String(clusters.length), `${clusters.filter((c) => of(schedulers, c.id).some((s) => s.state === "active")).length} with an active scheduler`),
      tile("Schedulers", String(schedulers.length), count(schedulers)),
      tile("Seed peers", String(seedPeers.length), count(seedPeers)),
      tile("Peers", String(peers.length), count(peers)));

    const seen = new Set<string>();
    clusters.forEach((cluster, index) => {
      const key = String(cluster.id);
      seen.add(key);
      let view = views.get(key);
      if (!view) {
        view = new ClusterView(ctx, cluster);
        views.set(key, view);
      }
      view.update(cluster, { schedulers: of(schedulers, cluster.id), seedPeers: of(seedPeers, cluster.id), peers: of(peers, cluster.id) });
      if (list.children[index] !== view.el) list.insertBefore(view.el, list.children[index] ?? null);
    });
    for (const [key, view] of views) {
      if (!seen.has(key)) {
        view.el.remove();
        views.delete(key);
      }
    }
    if (!clusters.length) {
      if (!list.querySelector(".empty")) {
        list.append(h("p", { class: "empty card" }, ctx.isRoot
          ? "No clusters yet. Create one above; with only a name it takes every host."
          : "No clusters yet."));
      }
    } else {
      list.querySelector(":scope > .empty")?.remove();
    }

    const known = new Set(clusters.map((c) => String(c.id)));
    const stray = (rows: Component[]) => rows.filter((r) => !known.has(String(r.cluster_id)));
    const orphans = { schedulers: stray(schedulers), seedPeers: stray(seedPeers), peers: stray(peers) };
    if (orphans.schedulers.length + orphans.seedPeers.length + orphans.peers.length) {
      fill(unassigned, h("section", { class: "cluster card orphans" },
        h("header", null, h("div", null, h("h2", null, "Not in any cluster"),
          h("p", { class: "scopes" }, "Registered components whose cluster is not listed."))),
        componentTable("schedulers", "Schedulers", orphans.schedulers, false),
        componentTable("seed-peers", "Seed peers", orphans.seedPeers, true),
        componentTable("peers", "Peers", orphans.peers, true)));
    } else {
      unassigned.replaceChildren();
    }
  }

  return { title: "Clusters", el, refresh };
}
