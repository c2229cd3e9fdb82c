"use strict";
(() => {
  // src/api.ts
  var TOKEN_KEY = "damselfly.console.token";
  var API_BASE = "api/v1";
  var ApiError = class extends Error {
    constructor(status, message2) {
      super(message2);
      this.status = status;
    }
    /** The session is gone (expired, revoked, or the manager forgot it): sign in again. */
    get unauthorized() {
      return this.status === 401;
    }
    get forbidden() {
      return this.status === 403;
    }
  };
  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }
  function setToken(token) {
    if (token === null) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, token);
  }
  function errorText(status, statusText, body, raw) {
    if (body && typeof body === "object") {
      const obj = body;
      for (const key of ["error", "message", "detail"]) {
        const value = obj[key];
        if (typeof value === "string" && value) return value;
        if (value !== void 0 && value !== null) return JSON.stringify(value);
      }
    }
    const text = raw.trim();
    if (text && text.length < 300 && !text.startsWith("<")) return text;
    return `${status} ${statusText || "error"}`.trim();
  }
  async function request(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== void 0) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(`${API_BASE}${path}`, {
        method,
        headers,
        body: body === void 0 ? void 0 : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin"
      });
    } catch {
      throw new ApiError(0, "Cannot reach the manager: the network request failed.");
    }
    const raw = await response.text();
    let parsed = void 0;
    if (raw) {
      try {
        parsed = JSON.parse(raw);
      } catch {
        parsed = void 0;
      }
    }
    if (!response.ok) {
      throw new ApiError(response.status, errorText(response.status, response.statusText, parsed, raw));
    }
    return parsed;
  }
  var api = {
    get: (path) => request("GET", path),
    post: (path, body) => request("POST", path, body),
    patch: (path, body) => request("PATCH", path, body),
    del: (path) => request("DELETE", path)
  };
  function asList(value) {
    if (Array.isArray(value)) return value;
    if (value && typeof value === "object") {
      for (const key of ["items", "results", "data"]) {
        const inner = value[key];
        if (Array.isArray(inner)) return inner;
      }
    }
    return [];
  }
  function idPath(id) {
    return encodeURIComponent(String(id));
  }

  // src/dom.ts
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs ?? {})) {
      if (value === void 0 || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "value" && "value" in el) {
        el.value = String(value);
      } else if (key === "checked" && el instanceof HTMLInputElement) {
        el.checked = Boolean(value);
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
    append(el, children);
    return el;
  }
  function append(parent, children) {
    for (const child of children) {
      if (child === null || child === void 0 || child === false) continue;
      if (Array.isArray(child)) append(parent, child);
      else parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  function fill(parent, ...children) {
    parent.replaceChildren();
    append(parent, children);
  }
  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function formatBytes(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "\u2014";
    let n = value;
    let unit = 0;
    while (Math.abs(n) >= 1024 && unit < UNITS.length - 1) {
      n /= 1024;
      unit++;
    }
    return unit === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${UNITS[unit]}`;
  }
  function parseTime(value) {
    if (typeof value !== "string" && typeof value !== "number") return null;
    const date = new Date(typeof value === "number" && value < 1e12 ? value * 1e3 : value);
    return Number.isNaN(date.getTime()) ? null : date;
  }
  function relativeTime(value, now = Date.now()) {
    const date = parseTime(value);
    if (!date) return "never";
    const seconds = Math.round((date.getTime() - now) / 1e3);
    const abs = Math.abs(seconds);
    const [amount, unit] = abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"] : abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), abs < 2 * 86400 ? "day" : "days"];
    if (abs < 2) return "just now";
    return seconds < 0 ? `${amount} ${unit} ago` : `in ${amount} ${unit}`;
  }
  function formatTime(value) {
    const date = parseTime(value);
    return date ? date.toLocaleString() : "\u2014";
  }
  function timeCell(value) {
    const date = parseTime(value);
    return h(
      "time",
      date ? { datetime: date.toISOString(), title: date.toLocaleString() } : null,
      date ? relativeTime(value) : "\u2014"
    );
  }
  function dateCell(value) {
    const date = parseTime(value);
    return h("time", date ? { datetime: date.toISOString(), title: relativeTime(value) } : null, date ? formatTime(value) : "\u2014");
  }
  function stateBadge(state) {
    const text = typeof state === "string" && state ? state : "unknown";
    return h("span", { class: `badge state-${text.replace(/[^a-z-]/gi, "")}` }, text);
  }
  function display(value) {
    if (value === null || value === void 0 || value === "") return "\u2014";
    if (typeof value === "string") return value;
    if (typeof value === "number" || typeof value === "boolean") return String(value);
    if (Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null)) {
      return value.length ? value.map(String).join(", ") : "\u2014";
    }
    return JSON.stringify(value);
  }
  function humanize(key) {
    const words = key.replace(/_/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
    return words.charAt(0).toUpperCase() + words.slice(1);
  }
  function confirmButton(label, confirmLabel, action) {
    let armed;
    const button = h("button", { type: "button", class: "danger" }, label);
    button.addEventListener("click", () => {
      if (armed !== void 0) {
        window.clearTimeout(armed);
        armed = void 0;
        button.textContent = label;
        button.classList.remove("armed");
        action();
        return;
      }
      button.textContent = confirmLabel;
      button.classList.add("armed");
      armed = window.setTimeout(() => {
        armed = void 0;
        button.textContent = label;
        button.classList.remove("armed");
      }, 4e3);
    });
    return button;
  }

  // src/autotable.ts
  var PROGRESS_KEYS = ["progress", "percent", "percentage", "ratio", "fraction"];
  var DONE_KEYS = [
    "completed_bytes",
    "downloaded_bytes",
    "done_bytes",
    "bytes_done",
    "finished_pieces",
    "completed_pieces",
    "pieces_done",
    "have_pieces"
  ];
  var TOTAL_KEYS = ["total_bytes", "content_length", "size", "total_pieces", "pieces_total", "piece_count"];
  function isTimeKey(key) {
    return /(_at|^at|^time|timestamp|^when|^date)$/i.test(key);
  }
  function isBytesKey(key) {
    return /bytes|^size$|content_length/i.test(key);
  }
  function fraction(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return null;
    return Math.max(0, Math.min(1, value > 1 ? value / 100 : value));
  }
  function progressCell(f, text) {
    if (f === null) return "\u2014";
    return h("span", { class: "progress" }, h("progress", { max: 1, value: f }), ` ${text ?? `${Math.round(f * 100)}%`}`);
  }
  function cell(key, value, options = {}) {
    if ((key === "state" || key === "status") && typeof value === "string") return stateBadge(value);
    if (isTimeKey(key) && (typeof value === "string" || typeof value === "number")) {
      if (options.times === "absolute") return h("time", { title: relativeTime(value) }, formatTime(value));
      return timeCell(value);
    }
    if (isBytesKey(key) && typeof value === "number") return h("span", { title: `${value} bytes` }, formatBytes(value));
    if (PROGRESS_KEYS.includes(key)) return progressCell(fraction(value));
    if (value !== null && typeof value === "object" && !(Array.isArray(value) && value.every((v) => typeof v !== "object"))) {
      return h("code", { class: "json" }, JSON.stringify(value));
    }
    if (typeof value === "boolean") return value ? "yes" : "no";
    return display(value);
  }
  function columnsOf(rows, options = {}) {
    const seen = [];
    for (const row of rows) for (const key of Object.keys(row)) if (!seen.includes(key)) seen.push(key);
    const hidden = new Set(options.hidden ?? []);
    const preferred = (options.preferred ?? []).filter((k) => seen.includes(k));
    return [...preferred, ...seen.filter((k) => !preferred.includes(k))].filter((k) => !hidden.has(k));
  }
  function autoTable(rows, options = {}) {
    const columns = columnsOf(rows, options);
    const done = DONE_KEYS.find((k) => columns.includes(k));
    const total = TOTAL_KEYS.find((k) => columns.includes(k));
    const derived = done && total && !columns.some((k) => PROGRESS_KEYS.includes(k));
    const numeric = (key) => rows.some((r) => typeof r[key] === "number") && !PROGRESS_KEYS.includes(key);
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "auto" },
        h("thead", null, h(
          "tr",
          null,
          columns.map((k) => h("th", numeric(k) ? { class: "num" } : null, options.labels?.[k] ?? humanize(k))),
          derived ? h("th", null, "Progress") : null
        )),
        h("tbody", null, rows.map((row) => h(
          "tr",
          null,
          columns.map((k) => h("td", numeric(k) ? { class: "num" } : null, cell(k, row[k], options))),
          derived ? h("td", null, (() => {
            const d = row[done];
            const t = row[total];
            return typeof d === "number" && typeof t === "number" && t > 0 ? progressCell(fraction(d / t)) : "\u2014";
          })()) : null
        )))
      )
    );
  }
  function isRowList(value) {
    return Array.isArray(value) && value.length > 0 && value.every((v) => v !== null && typeof v === "object" && !Array.isArray(v));
  }
  function renderAny(value, options = {}, empty = "Nothing.") {
    if (Array.isArray(value)) {
      if (!value.length) return h("p", { class: "empty" }, empty);
      if (isRowList(value)) return autoTable(value, options);
      return h("ul", null, value.map((v) => h("li", null, display(v))));
    }
    if (value !== null && typeof value === "object") {
      const obj = value;
      const plain = Object.entries(obj).filter(([, v]) => v === null || typeof v !== "object" || Array.isArray(v) && v.every((x) => typeof x !== "object"));
      const nested = Object.entries(obj).filter(([k]) => !plain.some(([p]) => p === k));
      return h(
        "div",
        { class: "any" },
        plain.length ? h("dl", { class: "facts" }, plain.map(([k, v]) => h("div", null, h("dt", null, options.labels?.[k] ?? humanize(k)), h("dd", null, cell(k, v, options))))) : null,
        nested.map(([k, v]) => h(
          "div",
          { class: "nested" },
          h("h3", null, options.labels?.[k] ?? humanize(k)),
          renderAny(v, options, empty)
        ))
      );
    }
    return h("p", null, display(value));
  }

  // src/pages/audit.ts
  var PAGE = 200;
  var SHOWN = 1e3;
  var TIME_KEYS = ["at", "created_at", "time", "timestamp"];
  function auditPage(ctx) {
    const filter = h("input", {
      type: "search",
      placeholder: "Filter: a name, a path, an address\u2026",
      "aria-label": "Filter",
      autocomplete: "off"
    });
    const table = h("div", { class: "audit" });
    const older = h("button", { type: "button", hidden: true }, "Load older entries");
    const el = h(
      "div",
      { class: "page audit-page" },
      h("div", { class: "page-head" }, h("h1", null, "Audit log")),
      h("p", { class: "lede" }, "Every change made through the API: who, when, from where, and what."),
      h("div", { class: "inline-form" }, filter),
      h("section", { class: "card" }, table, older)
    );
    let newest = [];
    let previous = [];
    let entries = [];
    const idOf = (e) => typeof e.id === "number" ? e.id : null;
    function merge() {
      const seen = /* @__PURE__ */ new Set();
      const all = [...newest, ...previous].filter((e) => {
        const id = idOf(e);
        if (id === null) return true;
        if (seen.has(id)) return false;
        seen.add(id);
        return true;
      });
      const timeKey = TIME_KEYS.find((k) => all.some((e) => parseTime(e[k])));
      entries = all.every((e) => idOf(e) !== null) ? all.sort((a, b) => idOf(b) - idOf(a)) : timeKey ? all.sort((a, b) => (parseTime(b[timeKey])?.getTime() ?? 0) - (parseTime(a[timeKey])?.getTime() ?? 0)) : all;
      draw();
    }
    older.addEventListener("click", () => {
      const ids = entries.map(idOf).filter((i) => i !== null);
      if (!ids.length) return;
      older.disabled = true;
      api.get(`/audit?limit=${PAGE}&before_id=${Math.min(...ids)}`).then((answer) => {
        const page = asList(answer);
        previous = [...previous, ...page];
        older.hidden = page.length < PAGE;
        merge();
      }).catch((err) => ctx.notify(`Could not load older entries: ${err.message}`, "error")).finally(() => {
        older.disabled = false;
      });
    });
    function draw() {
      const needle = filter.value.trim().toLowerCase();
      const rows = needle ? entries.filter((e) => JSON.stringify(e).toLowerCase().includes(needle)) : entries;
      if (!rows.length) {
        fill(table, h("p", { class: "empty" }, entries.length ? "Nothing matches the filter." : "Nothing has been changed yet."));
        return;
      }
      fill(
        table,
        autoTable(rows.slice(0, SHOWN), {
          preferred: [
            ...TIME_KEYS,
            "actor",
            "user",
            "user_name",
            "credential",
            "method",
            "action",
            "path",
            "status",
            "address",
            "summary"
          ],
          hidden: ["id"],
          times: "absolute"
        }),
        rows.length > SHOWN ? h("p", { class: "muted" }, `The newest ${SHOWN} of ${rows.length}; filter to narrow them.`) : null
      );
    }
    filter.addEventListener("input", draw);
    let last = "";
    async function refresh() {
      const list = asList(await api.get(`/audit?limit=${PAGE}`));
      const key = JSON.stringify(list);
      if (key === last) return;
      last = key;
      newest = list;
      if (!previous.length) older.hidden = list.length < PAGE || list.every((e) => idOf(e) === null);
      merge();
    }
    return { title: "Audit log", el, refresh };
  }

  // src/pages/clusters.ts
  var CONFIG = {
    upload_rate: {
      label: "Upload rate",
      kind: "number",
      min: 1,
      unset: "no cap",
      help: "Bytes per second each peer uploads at most.",
      show: (v) => `${formatBytes(v)}/s`
    },
    upload_slots: {
      label: "Upload slots",
      kind: "number",
      min: 1,
      max: 4096,
      unset: "each peer's own",
      help: "Pieces a peer uploads at once."
    },
    candidate_parent_limit: {
      label: "Candidate parents",
      kind: "number",
      min: 1,
      max: 64,
      help: "Parents a scheduler offers a peer at once."
    },
    back_to_source: {
      label: "Back to source",
      kind: "number",
      min: 0,
      unset: "no limit",
      help: "How many peers of one task may go to the registry themselves.",
      show: (v) => v === 0 ? "none" : `at most ${v} peer${v === 1 ? "" : "s"}`
    },
    block_list: {
      label: "Block list",
      kind: "lines",
      help: "Image references or digests that must not be served, one a line."
    }
  };
  var SCOPES = {
    idc: { label: "IDC", kind: "text", unset: "any", help: "Data centres, separated by |; a host in any of them belongs here." },
    location: { label: "Location", kind: "text", unset: "any", help: "A location prefix such as country|city: hosts there and below." },
    cidrs: { label: "CIDRs", kind: "lines", help: "Networks, one a line; a host whose address is in one belongs here." }
  };
  function specOf(key, specs, value) {
    return specs[key] ?? {
      label: humanize(key),
      help: "",
      kind: Array.isArray(value) ? "lines" : typeof value === "number" ? "number" : "text",
      unset: "not set"
    };
  }
  function valueText(spec, value) {
    if (value === null || value === void 0 || value === "") return spec.unset ?? "\u2014";
    if (Array.isArray(value)) return value.length ? `${value.length} entr${value.length === 1 ? "y" : "ies"}` : "empty";
    if (typeof value === "number" && spec.show) return spec.show(value);
    return display(value);
  }
  function scopeText(scopes) {
    const parts = Object.entries(scopes ?? {}).filter(([, v]) => v !== null && v !== void 0 && v !== "" && !(Array.isArray(v) && v.length === 0)).map(([k, v]) => `${specOf(k, SCOPES, v).label} ${display(v)}`);
    return parts.length ? parts.join(" \xB7 ") : "every host (no scopes)";
  }
  var fieldCount = 0;
  function field(key, value, spec) {
    const id = `field-${key}-${++fieldCount}`;
    const hint = [spec.help, spec.unset ? `Empty: ${spec.unset}.` : ""].filter(Boolean).join(" ");
    const wrap = (input2) => h("div", { class: "field" }, h("label", { for: id }, spec.label), input2, hint ? h("small", { class: "hint" }, hint) : null);
    if (spec.kind === "lines") {
      const area = h("textarea", { id, name: key, rows: 3, spellcheck: "false" });
      area.value = Array.isArray(value) ? value.map(String).join("\n") : "";
      return { el: wrap(area), read: () => area.value.split("\n").map((s) => s.trim()).filter(Boolean) };
    }
    if (spec.kind === "number") {
      const input2 = h("input", {
        type: "number",
        id,
        name: key,
        value: typeof value === "number" ? value : "",
        step: 1,
        min: spec.min,
        max: spec.max,
        required: !spec.unset,
        placeholder: spec.unset ?? ""
      });
      return { el: wrap(input2), read: () => input2.value === "" ? null : Number(input2.value) };
    }
    const input = h("input", {
      type: "text",
      id,
      name: key,
      value: value ?? "",
      placeholder: spec.unset ?? "",
      spellcheck: "false"
    });
    return { el: wrap(input), read: () => input.value.trim() === "" ? null : input.value.trim() };
  }
  function byState(a, b) {
    const active = (c) => c.state === "active" ? 0 : 1;
    return active(a) - active(b) || String(a.host_id ?? a.id).localeCompare(String(b.host_id ?? b.id));
  }
  function componentTable(kind, title, rows, withBytes) {
    const active = rows.filter((r) => r.state === "active").length;
    const heading = h("h3", null, title, " ", h("span", { class: "count" }, `${active} of ${rows.length} active`));
    if (!rows.length) {
      return h(
        "div",
        { class: "components", "data-kind": kind },
        heading,
        h("p", { class: "empty" }, `No ${title.toLowerCase()} have registered in this cluster.`)
      );
    }
    const head = ["State", "Host", "URL", "IDC", "Location", "Last keepalive", ...withBytes ? ["Uploaded", "Served"] : []];
    return h(
      "div",
      { class: "components", "data-kind": kind },
      heading,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          null,
          h("thead", null, h("tr", null, head.map((c, i) => h("th", i >= 6 ? { class: "num" } : null, c)))),
          h("tbody", null, [...rows].sort(byState).map((r) => h(
            "tr",
            { class: r.state === "active" ? "" : "inactive", "data-id": String(r.id) },
            h("td", null, stateBadge(r.state)),
            h("td", null, display(r.host_id ?? r.hostname ?? r.id)),
            h("td", null, h("code", null, display(r.url))),
            h("td", null, display(r.idc)),
            h("td", null, display(r.location)),
            h("td", null, timeCell(r.last_keepalive_at)),
            withBytes && h("td", { class: "num" }, formatBytes(r.uploaded_bytes)),
            withBytes && h("td", { class: "num" }, formatBytes(r.served_bytes))
          )))
        )
      )
    );
  }
  var ClusterView = class {
    constructor(ctx, cluster) {
      this.ctx = ctx;
      this.title = h("h2");
      this.scopes = h("p", { class: "scopes" });
      this.config = h("dl", { class: "config" });
      this.actions = h("div", { class: "actions" });
      this.editor = h("div", { class: "editor" });
      this.members = h("div", { class: "members" });
      this.cluster = cluster;
      this.el = h(
        "section",
        { class: "cluster card", "data-cluster-id": String(cluster.id) },
        h("header", null, h("div", null, this.title, this.scopes), this.actions),
        this.config,
        this.editor,
        this.members
      );
      if (ctx.isRoot) {
        fill(
          this.actions,
          h("button", { type: "button", class: "edit", onclick: () => this.openEditor() }, "Edit"),
          confirmButton("Delete", "Really delete?", () => void this.remove())
        );
      }
    }
    update(cluster, members) {
      this.cluster = cluster;
      this.el.dataset.name = cluster.name;
      fill(this.title, cluster.name, " ", h("span", { class: "id" }, `#${cluster.id}`));
      this.scopes.textContent = `Hosts: ${scopeText(cluster.scopes)}`;
      fill(this.config, Object.entries(cluster.config ?? {}).map(([k, v]) => {
        const spec = specOf(k, CONFIG, v);
        return h(
          "div",
          { title: Array.isArray(v) && v.length ? v.join("\n") : spec.help, "data-key": k },
          h("dt", null, spec.label),
          h("dd", null, valueText(spec, v))
        );
      }));
      if (members) {
        fill(
          this.members,
          componentTable("schedulers", "Schedulers", members.schedulers, false),
          componentTable("seed-peers", "Seed peers", members.seedPeers, true),
          componentTable("peers", "Peers", members.peers, true)
        );
      }
    }
    openEditor() {
      const c = this.cluster;
      const name = field("name", c.name, { label: "Name", kind: "text", help: "Letters, digits and . _ @ -, up to 64." });
      const scopes = Object.entries(c.scopes ?? {}).map(([k, v]) => [k, field(k, v, specOf(k, SCOPES, v))]);
      const config = Object.entries(c.config ?? {}).map(([k, v]) => [k, field(k, v, specOf(k, CONFIG, v))]);
      const save = h("button", { type: "submit", class: "primary" }, "Save");
      const form = h(
        "form",
        { class: "edit-cluster" },
        h("fieldset", null, h("legend", null, "Name"), name.el),
        scopes.length ? h("fieldset", null, h("legend", null, "Which hosts belong here"), scopes.map(([, f]) => f.el)) : null,
        config.length ? h(
          "fieldset",
          null,
          h("legend", null, "Configuration (peers and schedulers pick it up within a minute)"),
          config.map(([, f]) => f.el)
        ) : null,
        h(
          "div",
          { class: "buttons" },
          save,
          h("button", { type: "button", onclick: () => this.closeEditor() }, "Cancel")
        )
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const body = {
          name: name.read(),
          ...scopes.length ? { scopes: Object.fromEntries(scopes.map(([k, f]) => [k, f.read()])) } : {},
          ...config.length ? { config: Object.fromEntries(config.map(([k, f]) => [k, f.read()])) } : {}
        };
        void this.ctx.act(
          save,
          `save cluster \u201C${c.name}\u201D`,
          () => api.patch(`/clusters/${idPath(c.id)}`, body),
          `Cluster \u201C${String(body.name)}\u201D saved.`
        ).then((ok) => ok && this.closeEditor());
      });
      this.el.classList.add("editing");
      fill(this.editor, form);
    }
    closeEditor() {
      this.el.classList.remove("editing");
      this.editor.replaceChildren();
      this.ctx.refreshSoon();
    }
    async remove() {
      const c = this.cluster;
      await this.ctx.act(
        null,
        `delete cluster \u201C${c.name}\u201D`,
        () => api.del(`/clusters/${idPath(c.id)}`),
        `Cluster \u201C${c.name}\u201D deleted.`
      );
    }
  };
  function tile(label, value, detail) {
    return h(
      "div",
      { class: "tile" },
      h("div", { class: "tile-value" }, value),
      h("div", { class: "tile-label" }, label),
      h("div", { class: "tile-detail" }, detail)
    );
  }
  function clustersPage(ctx) {
    const summary = h("div", { class: "tiles" });
    const list = h("div", { class: "clusters" });
    const unassigned = h("div", { class: "unassigned" });
    const views = /* @__PURE__ */ new Map();
    let create = null;
    if (ctx.isRoot) {
      const input = h("input", {
        type: "text",
        name: "name",
        placeholder: "name of a new cluster",
        required: true,
        autocomplete: "off",
        spellcheck: "false",
        "aria-label": "Name of the new cluster"
      });
      const button = h("button", { type: "submit", class: "primary" }, "Create cluster");
      create = h("form", { class: "inline-form", id: "create-cluster" }, input, button);
      create.addEventListener("submit", (event) => {
        event.preventDefault();
        const name = input.value.trim();
        if (!name) return;
        void ctx.act(
          button,
          `create cluster \u201C${name}\u201D`,
          () => api.post("/clusters", { name }),
          `Cluster \u201C${name}\u201D created; it takes every host until you give it scopes.`
        ).then((ok) => {
          if (ok) input.value = "";
        });
      });
    }
    const el = h(
      "div",
      { class: "page clusters-page" },
      h("div", { class: "page-head" }, h("h1", null, "Clusters"), create),
      summary,
      list,
      unassigned
    );
    async function refresh() {
      const [clusters, schedulers, seedPeers, peers] = await Promise.all([
        api.get("/clusters").then((v) => asList(v)),
        api.get("/schedulers").then((v) => asList(v)),
        api.get("/seed-peers").then((v) => asList(v)),
        api.get("/peers").then((v) => asList(v))
      ]);
      const of = (rows, id) => rows.filter((r) => String(r.cluster_id) === String(id));
      const count = (rows) => `${rows.filter((r) => r.state === "active").length} of ${rows.length} active`;
      fill(
        summary,
        tile("Clusters", String(clusters.length), `${clusters.filter((c) => of(schedulers, c.id).some((s) => s.state === "active")).length} with an active scheduler`),
        tile("Schedulers", String(schedulers.length), count(schedulers)),
        tile("Seed peers", String(seedPeers.length), count(seedPeers)),
        tile("Peers", String(peers.length), count(peers))
      );
      const seen = /* @__PURE__ */ new Set();
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
          list.append(h("p", { class: "empty card" }, ctx.isRoot ? "No clusters yet. Create one above; with only a name it takes every host." : "No clusters yet."));
        }
      } else {
        list.querySelector(":scope > .empty")?.remove();
      }
      const known = new Set(clusters.map((c) => String(c.id)));
      const stray = (rows) => rows.filter((r) => !known.has(String(r.cluster_id)));
      const orphans = { schedulers: stray(schedulers), seedPeers: stray(seedPeers), peers: stray(peers) };
      if (orphans.schedulers.length + orphans.seedPeers.length + orphans.peers.length) {
        fill(unassigned, h(
          "section",
          { class: "cluster card orphans" },
          h("header", null, h(
            "div",
            null,
            h("h2", null, "Not in any cluster"),
            h("p", { class: "scopes" }, "Registered components whose cluster is not listed.")
          )),
          componentTable("schedulers", "Schedulers", orphans.schedulers, false),
          componentTable("seed-peers", "Seed peers", orphans.seedPeers, true),
          componentTable("peers", "Peers", orphans.peers, true)
        ));
      } else {
        unassigned.replaceChildren();
      }
    }
    return { title: "Clusters", el, refresh };
  }

  // src/pages/users.ts
  var ROLES = ["guest", "root"];
  var MIN_PASSWORD = 12;
  function roleSelect(value, attrs = {}) {
    const select2 = h("select", attrs, ROLES.map((r) => h("option", { value: r }, r)));
    select2.value = value;
    return select2;
  }
  function busy(el) {
    const active = document.activeElement;
    const typing = active instanceof HTMLInputElement || active instanceof HTMLSelectElement || active instanceof HTMLTextAreaElement;
    return typing && el.contains(active) || el.querySelector(".editing") !== null;
  }
  function usersPage(ctx) {
    const name = h("input", {
      type: "text",
      name: "name",
      required: true,
      autocomplete: "off",
      "aria-label": "Name",
      placeholder: "name"
    });
    const password = h("input", {
      type: "password",
      name: "password",
      required: true,
      minlength: MIN_PASSWORD,
      autocomplete: "new-password",
      placeholder: `password, ${MIN_PASSWORD}+ characters`,
      "aria-label": "Password"
    });
    const role = roleSelect("guest", { name: "role", "aria-label": "Role" });
    const submit = h("button", { type: "submit", class: "primary" }, "Create user");
    const form = h("form", { class: "inline-form", id: "create-user" }, name, password, role, submit);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const body = { name: name.value.trim(), password: password.value, role: role.value };
      void ctx.act(
        submit,
        `create user \u201C${body.name}\u201D`,
        () => api.post("/users", body),
        `User \u201C${body.name}\u201D created with role ${body.role}.`
      ).then((ok) => {
        if (ok) {
          name.value = "";
          password.value = "";
        }
      });
    });
    const table = h("div", { class: "users" });
    const el = h(
      "div",
      { class: "page users-page" },
      h("div", { class: "page-head" }, h("h1", null, "Users")),
      h(
        "p",
        { class: "lede" },
        "Root may change anything; a guest may look at clusters and tasks but change nothing. ",
        `Passwords need at least ${MIN_PASSWORD} characters.`
      ),
      h("section", { class: "card" }, h("h2", null, "New user"), form),
      h("section", { class: "card" }, h("h2", null, "All users"), table)
    );
    let last = "";
    function row(user) {
      const self = String(user.id) === String(ctx.me.id);
      const select2 = roleSelect(user.role, { "aria-label": `Role of ${user.name}` });
      select2.addEventListener("change", () => {
        const to = select2.value;
        void ctx.act(
          null,
          `change the role of \u201C${user.name}\u201D`,
          () => api.patch(`/users/${idPath(user.id)}`, { role: to }),
          `\u201C${user.name}\u201D is now ${to}.`
        ).then((ok) => {
          if (!ok) select2.value = user.role;
        });
      });
      const actions = h("td", { class: "actions" });
      const setPassword = h("button", { type: "button" }, "Set password");
      setPassword.addEventListener("click", () => {
        const input = h("input", {
          type: "password",
          minlength: MIN_PASSWORD,
          autocomplete: "new-password",
          placeholder: "new password",
          "aria-label": `New password for ${user.name}`
        });
        const save = h("button", { type: "submit", class: "primary" }, "Save");
        const edit = h(
          "form",
          { class: "inline-form editing" },
          input,
          save,
          h("button", { type: "button", onclick: () => {
            fill(actions, ...buttons);
            last = "";
          } }, "Cancel")
        );
        edit.addEventListener("submit", (event) => {
          event.preventDefault();
          void ctx.act(
            save,
            `set the password of \u201C${user.name}\u201D`,
            () => api.patch(`/users/${idPath(user.id)}`, { password: input.value }),
            `Password of \u201C${user.name}\u201D changed.`
          ).then((ok) => {
            if (ok) {
              fill(actions, ...buttons);
              last = "";
            }
          });
        });
        fill(actions, edit);
        input.focus();
      });
      const buttons = [setPassword, self ? null : confirmButton("Delete", "Really delete?", () => {
        void ctx.act(
          null,
          `delete user \u201C${user.name}\u201D`,
          () => api.del(`/users/${idPath(user.id)}`),
          `User \u201C${user.name}\u201D deleted.`
        );
      })].filter((b) => b !== null);
      fill(actions, ...buttons);
      return h(
        "tr",
        { "data-name": user.name },
        h("td", null, user.name, self ? h("span", { class: "you" }, " (you)") : null),
        h("td", null, select2),
        h("td", null, h("span", { class: "id" }, display(user.id))),
        h("td", null, dateCell(user.created_at ?? null)),
        actions
      );
    }
    async function refresh() {
      const users = asList(await api.get("/users"));
      const key = JSON.stringify(users);
      if (key === last || busy(table)) return;
      last = key;
      fill(table, users.length ? h("div", { class: "table-wrap" }, h(
        "table",
        { id: "users-table" },
        h("thead", null, h("tr", null, ["Name", "Role", "ID", "Created", ""].map((c) => h("th", null, c)))),
        h("tbody", null, users.map(row))
      )) : h("p", { class: "empty" }, "No users."));
    }
    return { title: "Users", el, refresh };
  }

  // src/pages/preheat.ts
  var ACTIVE = /* @__PURE__ */ new Set(["PENDING", "RUNNING"]);
  var IDLE_MS = 3e4;
  var SHOWN2 = 100;
  var SCOPES2 = {
    single_seed_peer: "One seed peer",
    all_seed_peers: "All seed peers",
    all_peers: "All peers"
  };
  var PLATFORMS = ["all", "linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x", "windows/amd64"];
  var DEFAULT_TIMEOUT = 3600;
  function isActive(job) {
    return ACTIVE.has(job.state);
  }
  function arg(job, key) {
    return job.args ? job.args[key] : void 0;
  }
  function jobHref(id) {
    return `#/preheat?job=${encodeURIComponent(String(id))}`;
  }
  function shortDigest(digest) {
    const colon = digest.indexOf(":");
    const hex = colon < 0 ? digest : digest.slice(colon + 1);
    return hex.length > 12 ? `${digest.slice(0, colon + 1)}${hex.slice(0, 12)}\u2026` : digest;
  }
  function scopeText2(job) {
    const scope = typeof arg(job, "scope") === "string" ? String(arg(job, "scope")) : "single_seed_peer";
    const count = arg(job, "count");
    const percentage = arg(job, "percentage");
    const ips = arg(job, "ips");
    const narrowed = [
      typeof count === "number" ? `${count} peer${count === 1 ? "" : "s"}` : null,
      typeof percentage === "number" ? `${percentage}% of peers` : null,
      Array.isArray(ips) && ips.length ? `${ips.length} address${ips.length === 1 ? "" : "es"}` : null
    ].filter(Boolean);
    return [scope.replace(/_/g, " "), ...narrowed].join(" \xB7 ");
  }
  function placement(hosts) {
    return {
      done: hosts.filter((x) => x.state === "done").length,
      failed: hosts.filter((x) => x.state === "failed").length,
      total: hosts.length
    };
  }
  function allHosts(blobs) {
    return blobs.flatMap((b) => b.hosts ?? []);
  }
  function progressText(p, noun) {
    return [
      h("span", { class: "progress" }, h("progress", { max: p.total, value: p.done }), ` ${p.done}/${p.total} ${noun}`),
      p.failed ? h("span", { class: "error-text" }, `, ${p.failed} failed`) : null
    ];
  }
  function jobProgress(job) {
    const blobs = job.blobs ?? [];
    const p = placement(allHosts(blobs));
    if (!p.total) {
      return h("span", { class: "muted" }, !blobs.length ? isActive(job) ? "resolving\u2026" : "\u2014" : "no host chosen yet");
    }
    const hosts = new Set(allHosts(blobs).map((x) => x.host_id)).size;
    return h(
      "span",
      { title: `${blobs.length} blob${blobs.length === 1 ? "" : "s"} on ${hosts} host${hosts === 1 ? "" : "s"}` },
      progressText(p, "placed")
    );
  }
  function cancelButton(ctx, job, onCancel) {
    const button = confirmButton("Cancel job", "Really cancel?", () => {
      onCancel();
      void ctx.act(
        button,
        `cancel preheat job #${job.id}`,
        () => api.del(`/jobs/${idPath(job.id)}`),
        `Preheat job #${job.id} cancelled.`
      );
    });
    button.classList.add("cancel-job");
    return button;
  }
  var Clusters = class {
    constructor() {
      this.list = null;
      this.problem = null;
      this.readAt = 0;
    }
    async load() {
      if (this.list && Date.now() - this.readAt < IDLE_MS) return;
      try {
        this.list = asList(await api.get("/clusters"));
        this.readAt = Date.now();
        this.problem = null;
      } catch (err) {
        if (err instanceof ApiError && err.unauthorized) throw err;
        this.problem = err.message;
      }
    }
    name(id) {
      const cluster = this.list?.find((c) => String(c.id) === String(id));
      return cluster ? `${cluster.name} (#${cluster.id})` : `#${id}`;
    }
  };
  var fieldCount2 = 0;
  function labelled(label, input, hint, attrs = {}) {
    const id = input.id || `preheat-${++fieldCount2}`;
    input.id = id;
    if (hint) input.setAttribute("aria-describedby", `${id}-hint`);
    return h(
      "div",
      { class: "field", ...attrs },
      h("label", { for: id }, label),
      input,
      hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null
    );
  }
  function select(name, options, value) {
    const el = h("select", { name }, options.map(([v, text]) => h("option", { value: v }, text)));
    el.value = value;
    return el;
  }
  function parseHeaders(text) {
    const headers = {};
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
  function newJobForm(ctx, started) {
    const url = h("input", {
      type: "text",
      name: "url",
      id: "preheat-url",
      required: true,
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "registry.example/team/app:1.2"
    });
    const type = select("type", [["image", "Image"], ["file", "File"]], "image");
    const platform = h("input", {
      type: "text",
      name: "platform",
      value: "all",
      list: "preheat-platforms",
      autocomplete: "off",
      spellcheck: "false"
    });
    const platforms = h("datalist", { id: "preheat-platforms" }, PLATFORMS.map((p) => h("option", { value: p })));
    const digest = h("input", { type: "text", name: "digest", autocomplete: "off", spellcheck: "false", placeholder: "sha256:\u2026" });
    const scope = select("scope", Object.entries(SCOPES2), "single_seed_peer");
    const count = h("input", { type: "number", name: "count", min: 1, step: 1, placeholder: "all" });
    const percentage = h("input", { type: "number", name: "percentage", min: 1, max: 100, step: 1, placeholder: "all" });
    const ips = h("input", { type: "text", name: "ips", autocomplete: "off", spellcheck: "false", placeholder: "any" });
    const cluster = select("cluster", [["", "Every cluster"]], "");
    const timeout = h("input", { type: "number", name: "timeout", min: 1, step: 1, value: DEFAULT_TIMEOUT, required: true });
    const username = h("input", { type: "text", name: "username", autocomplete: "off", spellcheck: "false" });
    const password = h("input", { type: "password", name: "password", autocomplete: "new-password" });
    const headers = h("textarea", {
      name: "headers",
      rows: 2,
      spellcheck: "false",
      autocomplete: "off",
      placeholder: "X-Registry-Token: \u2026"
    });
    const error = h("p", { class: "error-text", id: "preheat-error", role: "alert", hidden: true });
    const submit = h("button", { type: "submit", class: "primary" }, "Start preheat");
    const clusterIds = /* @__PURE__ */ new Map();
    let shownClusters = "";
    const clusterHint = h("small", { class: "hint", id: "preheat-cluster-hint" }, "Empty: every cluster.");
    cluster.id = "preheat-cluster";
    cluster.setAttribute("aria-describedby", clusterHint.id);
    const platformField = labelled(
      "Platform",
      platform,
      "all (every platform an index lists), or os/arch[/variant] such as linux/amd64."
    );
    const digestField = labelled("Digest", digest, "The file's digest: every host checks the bytes against it.");
    const peersField = h(
      "fieldset",
      { class: "peers" },
      h("legend", null, "Which peers (optional)"),
      h(
        "div",
        { class: "grid" },
        labelled("Count", count, "At most this many peers."),
        labelled("Percentage", percentage, "Or this share of them, 1\u2013100."),
        labelled("IP addresses", ips, "Only peers at these addresses, separated by spaces or commas.")
      )
    );
    const kind = () => {
      platformField.hidden = type.value !== "image";
      digestField.hidden = type.value !== "file";
      digest.required = type.value === "file";
      peersField.hidden = scope.value !== "all_peers";
      url.placeholder = type.value === "file" ? "http(s)://registry.example/v2/team/files/blobs/sha256:\u2026" : "registry.example/team/app:1.2";
    };
    type.addEventListener("change", kind);
    scope.addEventListener("change", kind);
    kind();
    const say = (text) => {
      error.textContent = text;
      error.hidden = !text;
    };
    const forgetSecrets = () => {
      password.value = "";
      headers.value = "";
    };
    const form = h(
      "form",
      { id: "new-preheat", class: "preheat-form", method: "post", autocomplete: "off" },
      h(
        "div",
        { class: "grid" },
        labelled(
          "Image or file",
          url,
          "An image reference (registry/repository:tag or @digest), or a file's blob URL (http(s)://registry/v2/repository/blobs/sha256:\u2026).",
          { class: "field wide" }
        ),
        labelled("Type", type),
        platformField,
        digestField,
        labelled(
          "Where",
          scope,
          "One seed peer: the least busy. All peers: every seed peer, then peers, which get each blob from the seeds."
        ),
        h("div", { class: "field" }, h("label", { for: cluster.id }, "Cluster"), cluster, clusterHint),
        labelled("Timeout (seconds)", timeout, "The job fails if it has not placed everything by then.")
      ),
      peersField,
      h(
        "details",
        { class: "credentials", id: "preheat-credentials" },
        h("summary", null, "Private registry (optional)"),
        h(
          "div",
          { class: "grid" },
          labelled("Username", username),
          labelled("Password", password, "Sent once; the manager never shows it, and this page forgets it once sent."),
          labelled(
            "Headers",
            headers,
            "Name: value, one a line; their values are never shown either.",
            { class: "field wide" }
          )
        )
      ),
      platforms,
      error,
      h("div", { class: "buttons" }, submit)
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      say("");
      const args = {
        type: type.value,
        url: url.value.trim(),
        scope: scope.value,
        timeout: timeout.value === "" ? DEFAULT_TIMEOUT : Number(timeout.value)
      };
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
      const body = { type: "preheat", args, ...chosen !== void 0 ? { cluster_ids: [chosen] } : {} };
      let created = null;
      let refused = null;
      void ctx.act(submit, "start the preheat", async () => {
        try {
          created = await api.post("/jobs", body);
        } catch (err) {
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
        const job = created;
        if (!job) return;
        ctx.notify(`Preheat job #${job.id} started for ${display(arg(job, "url") ?? args.url)}.`);
        url.value = "";
        digest.value = "";
        started(job);
      });
    });
    return {
      el: form,
      showClusters(clusters) {
        clusterHint.textContent = clusters.problem ? `Could not list the clusters (${clusters.problem}); every cluster, or try later.` : "Every cluster, or only one.";
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
      }
    };
  }
  function jobsTable(ctx, jobs, onCancel) {
    const head = ["Job", "Image or file", "Where", "State", "Progress", "By", "Created", ""];
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "jobs-table", class: "jobs" },
        h("thead", null, h("tr", null, head.map((c) => h("th", null, c)))),
        h("tbody", null, jobs.map((job) => h(
          "tr",
          { "data-job-id": String(job.id), "data-state": job.state },
          h("td", null, h("a", { href: jobHref(job.id), "aria-label": `Preheat job ${job.id}` }, `#${job.id}`)),
          h(
            "td",
            { class: "url" },
            h("code", null, display(arg(job, "url"))),
            arg(job, "type") === "file" ? h("span", { class: "badge tag" }, "file") : null
          ),
          h("td", null, scopeText2(job)),
          h(
            "td",
            null,
            stateBadge(job.state),
            job.error ? h("div", { class: "job-error error-text", title: job.error }, job.error) : null
          ),
          h("td", null, jobProgress(job)),
          h("td", null, display(job.created_by)),
          h("td", null, dateCell(job.created_at ?? null)),
          h("td", { class: "actions" }, ctx.isRoot && isActive(job) ? cancelButton(ctx, job, onCancel) : null)
        )))
      ),
      jobs.length >= SHOWN2 ? h("p", { class: "muted" }, `The newest ${SHOWN2} jobs.`) : null
    );
  }
  function listPage(ctx) {
    const clusters = new Clusters();
    const table = h("div", { class: "jobs-list" }, h("p", { class: "muted" }, "Loading the jobs\u2026"));
    const checked = h("p", { class: "muted checked", id: "jobs-checked" });
    let stale = true;
    const form = ctx.isRoot ? newJobForm(ctx, () => {
      stale = true;
    }) : null;
    const el = h(
      "div",
      { class: "page preheat-page" },
      h("div", { class: "page-head" }, h("h1", null, "Preheat")),
      h(
        "p",
        { class: "lede" },
        "Place an image's blobs (or a file) on seed peers or peers before anyone pulls it, ",
        "so the first pull is served from the cluster instead of the registry."
      ),
      form ? h("section", { class: "card", id: "new-preheat-card" }, h("h2", null, "New preheat"), form.el) : null,
      h("section", { class: "card" }, h("h2", null, "Jobs"), table, checked)
    );
    let last = "";
    let active = false;
    let readAt = 0;
    async function refresh() {
      if (form) {
        await clusters.load();
        form.showClusters(clusters);
      }
      if (!stale && !active && Date.now() - readAt < IDLE_MS) return;
      const jobs = asList(await api.get(`/jobs?limit=${SHOWN2}`));
      stale = false;
      readAt = Date.now();
      active = jobs.some(isActive);
      checked.textContent = `Read at ${new Date(readAt).toLocaleTimeString()}; again every 3 s while a job is pending or running, every ${IDLE_MS / 1e3} s otherwise.`;
      const key = JSON.stringify(jobs);
      if (key === last || busy(table) || table.querySelector(".armed")) return;
      last = key;
      fill(table, jobs.length ? jobsTable(ctx, jobs, () => {
        stale = true;
      }) : h("p", { class: "empty" }, ctx.isRoot ? "No preheat jobs yet. Start one above." : "No preheat jobs yet."));
    }
    return { title: "Preheat", el, refresh };
  }
  function fact(label, value, key) {
    return h("div", { "data-key": key }, h("dt", null, label), h("dd", null, value));
  }
  function facts(job, clusters) {
    const a = (key) => arg(job, key);
    const ids = job.cluster_ids ?? [];
    return h(
      "dl",
      { class: "facts job-facts" },
      fact("Image or file", h("code", null, display(a("url"))), "url"),
      fact("Type", display(a("type")), "type"),
      a("type") !== "file" ? fact("Platform", display(a("platform") ?? "all"), "platform") : null,
      a("digest") ? fact("Digest", h("code", null, display(a("digest"))), "digest") : null,
      fact("Where", scopeText2(job), "scope"),
      Array.isArray(a("ips")) && a("ips").length ? fact("IP addresses", display(a("ips")), "ips") : null,
      fact("Clusters", ids.length ? ids.map((id) => clusters.name(id)).join(", ") : "every cluster", "clusters"),
      fact("Timeout", typeof a("timeout") === "number" ? `${a("timeout")} s` : "\u2014", "timeout"),
      fact("Credentials", a("private") ? "given, never shown" : "none", "private"),
      fact("Created by", display(job.created_by), "created_by"),
      fact("Created", dateCell(job.created_at ?? null), "created_at"),
      fact("Updated", dateCell(job.updated_at ?? null), "updated_at"),
      job.error ? fact("Error", h("span", { class: "error-text", id: "job-error" }, job.error), "error") : null
    );
  }
  function hostsTable(hosts) {
    const order = (a, b) => a.host_id.localeCompare(b.host_id);
    return h(
      "table",
      { class: "hosts" },
      h("thead", null, h("tr", null, ["Host", "State", "Error"].map((c) => h("th", null, c)))),
      h("tbody", null, [...hosts].sort(order).map((x) => h(
        "tr",
        { "data-host-id": x.host_id },
        h("td", null, x.host_id),
        h("td", null, stateBadge(x.state)),
        h("td", null, x.error ? h("span", { class: "error-text" }, x.error) : "\u2014")
      )))
    );
  }
  var blobCount = 0;
  function blobRows(blob, clusters, open, multiCluster) {
    const key = `${blob.cluster_id ?? ""}|${blob.digest}`;
    const hosts = blob.hosts ?? [];
    const p = placement(hosts);
    const id = `blob-hosts-${++blobCount}`;
    const hostsRow = h(
      "tr",
      { class: "hosts-row", id, hidden: !open.has(key) },
      h(
        "td",
        { colspan: multiCluster ? 6 : 5 },
        hosts.length ? hostsTable(hosts) : h("p", { class: "empty" }, "No host has been asked for it yet.")
      )
    );
    const toggle = h("button", {
      type: "button",
      class: "link toggle",
      "aria-controls": id,
      "aria-expanded": String(open.has(key))
    }, open.has(key) ? "Hide hosts" : "Show hosts");
    toggle.addEventListener("click", () => {
      const show = hostsRow.hidden;
      hostsRow.hidden = !show;
      toggle.setAttribute("aria-expanded", String(show));
      toggle.textContent = show ? "Hide hosts" : "Show hosts";
      if (show) open.add(key);
      else open.delete(key);
    });
    return h(
      "tbody",
      { "data-digest": blob.digest, "data-cluster-id": String(blob.cluster_id ?? "") },
      h(
        "tr",
        { class: "blob-row" },
        h("td", null, h("code", { title: blob.digest }, shortDigest(blob.digest))),
        h("td", null, display(blob.kind ?? "blob")),
        h("td", { class: "num" }, typeof blob.size === "number" ? h("span", { title: `${blob.size} bytes` }, formatBytes(blob.size)) : "\u2014"),
        multiCluster ? h("td", null, blob.cluster_id === void 0 || blob.cluster_id === null ? "\u2014" : clusters.name(blob.cluster_id)) : null,
        h("td", { class: "hosts-done" }, p.total ? progressText(p, "hosts done") : h("span", { class: "muted" }, "no host yet")),
        h("td", { class: "actions" }, toggle)
      ),
      hostsRow
    );
  }
  function blobsTable(job, clusters, open) {
    const blobs = job.blobs ?? [];
    if (!blobs.length) {
      return h("p", { class: "empty" }, isActive(job) ? "The manager is still reading what the image is made of." : "The job placed nothing.");
    }
    const multi = new Set(blobs.map((b) => String(b.cluster_id ?? ""))).size > 1;
    const whole = blobs.filter((b) => (b.hosts ?? []).length > 0 && (b.hosts ?? []).every((x) => x.state === "done")).length;
    const size = blobs.reduce((n, b) => n + (typeof b.size === "number" ? b.size : 0), 0);
    return h(
      "div",
      null,
      h(
        "p",
        { class: "muted", id: "blobs-summary" },
        `${whole} of ${blobs.length} on every host meant to hold them; `,
        `${formatBytes(size)} in all.`
      ),
      h("div", { class: "table-wrap" }, h(
        "table",
        { class: "job-blobs", id: "job-blobs" },
        h("thead", null, h("tr", null, ["Digest", "Kind", "Size", multi ? "Cluster" : null, "Hosts", ""].filter((c) => c !== null).map((c) => h("th", c === "Size" ? { class: "num" } : null, c)))),
        blobs.map((b) => blobRows(b, clusters, open, multi))
      ))
    );
  }
  function jobPage(ctx, id) {
    const clusters = new Clusters();
    const badge = h("span", { class: "job-state", id: "job-state" });
    const actions = h("div", { class: "actions" });
    const about = h("div", { class: "job-about" }, h("p", { class: "muted" }, "Loading the job\u2026"));
    const blobs = h("div", { class: "job-blobs-wrap" });
    const blobsCard = h("section", { class: "card" }, h("h2", null, "Blobs"), blobs);
    const open = /* @__PURE__ */ new Set();
    const el = h(
      "div",
      { class: "page preheat-page job-page", "data-job-id": id },
      h("p", { class: "back" }, h("a", { href: "#/preheat" }, "\u2190 All preheat jobs")),
      h("div", { class: "page-head" }, h("h1", null, `Preheat job #${id} `, badge), actions),
      h("section", { class: "card" }, about),
      blobsCard
    );
    let job = null;
    let gone = false;
    let stale = false;
    let last = "";
    async function refresh() {
      if (gone || job && !isActive(job) && !stale) return;
      await clusters.load();
      let answer;
      try {
        answer = await api.get(`/jobs/${encodeURIComponent(id)}`);
      } catch (err) {
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
      fill(actions, ctx.isRoot && isActive(answer) ? cancelButton(ctx, answer, () => {
        stale = true;
      }) : null);
      fill(about, facts(answer, clusters));
      fill(blobs, blobsTable(answer, clusters, open));
    }
    return { title: `Preheat job #${id}`, el, refresh };
  }
  function preheatPage(ctx, query) {
    const id = query.get("job");
    return id ? jobPage(ctx, id) : listPage(ctx);
  }

  // src/pages/tasks.ts
  function isTasksAnswer(value) {
    const v = value;
    return !!v && typeof v === "object" && Array.isArray(v.blobs) && v.blobs.every((b) => b && typeof b.digest === "string" && Array.isArray(b.peers));
  }
  function progress(peer) {
    const have = typeof peer.pieces === "number" ? peer.pieces : null;
    const total = typeof peer.piece_count === "number" && peer.piece_count > 0 ? peer.piece_count : null;
    if (peer.done) return h("span", { class: "progress" }, h("progress", { max: 1, value: 1 }), " whole blob");
    if (have !== null && total !== null) {
      return h("span", { class: "progress" }, h("progress", { max: total, value: have }), ` ${have} of ${total} pieces`);
    }
    return have !== null ? `${have} pieces` : "\u2014";
  }
  function peersTable(peers) {
    const order = (a, b) => Number(!!b.done) - Number(!!a.done) || (b.pieces ?? 0) - (a.pieces ?? 0);
    return h("div", { class: "table-wrap" }, h(
      "table",
      null,
      h("thead", null, h("tr", null, ["Peer", "Progress", "Upload URL", "Scheduler"].map((c) => h("th", null, c)))),
      h("tbody", null, [...peers].sort(order).map((p) => h(
        "tr",
        null,
        h("td", null, display(p.host_id)),
        h("td", null, progress(p)),
        h("td", null, h("code", null, display(p.upload_url))),
        h("td", null, h("code", null, display(p.scheduler_url)))
      )))
    ));
  }
  function renderTasks(answer) {
    const holders = answer.blobs.reduce((n, b) => n + b.peers.length, 0);
    const schedulers = answer.schedulers ?? [];
    const blobs = answer.blobs.length;
    return h(
      "div",
      { class: "tasks" },
      answer.image ? h("p", null, "Image ", h("code", null, answer.image), `: ${blobs} blob${blobs === 1 ? "" : "s"}.`) : null,
      !holders ? h("p", { class: "empty" }, "No peer holds it (yet).") : null,
      holders ? answer.blobs.map((blob) => h(
        "div",
        { class: "blob", "data-digest": blob.digest },
        h("h3", null, h("code", null, blob.digest), " ", h("span", { class: "count" }, blob.peers.length ? `${blob.peers.filter((p) => p.done).length} of ${blob.peers.length} peers hold all of it` : "no peer holds it yet")),
        blob.peers.length ? peersTable(blob.peers) : null
      )) : null,
      h(
        "div",
        { class: "asked" },
        h("h3", null, "Schedulers asked"),
        schedulers.length ? h("ul", null, schedulers.map((s) => h(
          "li",
          null,
          h("code", null, s.url),
          " \u2014 ",
          s.error ? h("span", { class: "error-text" }, `no answer: ${s.error}`) : "answered"
        ))) : h("p", { class: "muted" }, "None: no scheduler is active in any cluster, so no peer could be asked about.")
      )
    );
  }
  var DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
  function isDigest(text) {
    return DIGEST.test(text);
  }
  function tasksPage(_ctx, query) {
    const input = h("input", {
      type: "search",
      name: "q",
      value: query.get("q") ?? "",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "sha256:\u2026 or registry.example/team/app:1.2",
      "aria-label": "Digest or image reference"
    });
    const plain = h("input", { type: "checkbox", id: "plain-http", name: "plain_http", checked: query.get("plain") === "1" });
    const plainLabel = h(
      "span",
      { class: "check", title: "Read the image's manifest from its registry over plain HTTP" },
      plain,
      h("label", { for: "plain-http" }, "registry over plain HTTP")
    );
    const kind = h("small", { class: "hint" });
    const result = h("div", { class: "result card" });
    const form = h(
      "form",
      { class: "inline-form search", id: "task-search" },
      input,
      plainLabel,
      h("button", { type: "submit", class: "primary" }, "Search")
    );
    const describe = () => {
      const q = input.value.trim();
      kind.textContent = !q ? "A blob digest, or an image reference (name:tag or name@digest)." : isDigest(q) ? "Searching by digest." : "Searching by image reference: the manager reads its manifest, then asks for each layer.";
      plainLabel.hidden = !q || isDigest(q);
    };
    input.addEventListener("input", describe);
    describe();
    let current2 = { q: input.value.trim(), plain: plain.checked, refused: false };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      current2 = { q: input.value.trim(), plain: plain.checked, refused: false };
      const params = new URLSearchParams();
      if (current2.q) params.set("q", current2.q);
      if (current2.q && current2.plain && !isDigest(current2.q)) params.set("plain", "1");
      history.replaceState(null, "", `#/tasks${params.toString() ? `?${params}` : ""}`);
      fill(result, h("p", { class: "muted" }, "Asking the schedulers\u2026"));
      void page.refresh().catch(() => void 0);
    });
    const el = h(
      "div",
      { class: "page tasks-page" },
      h("div", { class: "page-head" }, h("h1", null, "Tasks")),
      h("p", { class: "lede" }, "Which peers hold a blob or an image, and how far each got. The answer refreshes while you watch."),
      form,
      kind,
      result
    );
    const page = {
      title: "Tasks",
      el,
      async refresh() {
        const asked = current2;
        if (!asked.q) {
          fill(result, h("p", { class: "muted" }, "Search for a digest or an image reference to see where it is."));
          return;
        }
        if (asked.refused) return;
        const byDigest = isDigest(asked.q);
        const params = new URLSearchParams({ [byDigest ? "digest" : "image"]: asked.q });
        if (!byDigest && asked.plain) params.set("plain_http", "true");
        let answer;
        try {
          answer = await api.get(`/tasks?${params}`);
        } catch (err) {
          if (asked !== current2) return;
          if (err instanceof ApiError && err.status >= 400 && err.status < 500 && !err.unauthorized) {
            asked.refused = true;
            fill(result, h("p", { class: "error-text" }, err.message));
            return;
          }
          fill(result, h("p", { class: "error-text" }, `${err.message} Asking again in a few seconds.`));
          throw err;
        }
        if (asked !== current2) return;
        fill(
          result,
          h("p", { class: "muted" }, `As of ${(/* @__PURE__ */ new Date()).toLocaleTimeString()}, asked by ${byDigest ? "digest" : "image reference"}.`),
          isTasksAnswer(answer) ? renderTasks(answer) : renderAny(answer, {
            preferred: [
              "state",
              "host_id",
              "peer_id",
              "hostname",
              "url",
              "idc",
              "location",
              "progress",
              "finished_pieces",
              "total_pieces",
              "completed_bytes",
              "content_length",
              "updated_at"
            ],
            times: "relative"
          }, "No peer holds it (yet).")
        );
      }
    };
    return page;
  }

  // src/pages/tokens.ts
  var SCOPES3 = {
    cluster: "clusters, their configuration and members",
    job: "jobs such as preheat"
  };
  function isoDate(days) {
    const d = new Date(Date.now() + days * 864e5);
    return d.toISOString().slice(0, 10);
  }
  async function copy(text, input) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      input.select();
      return document.execCommand("copy");
    }
  }
  function tokensPage(ctx) {
    const name = h("input", {
      type: "text",
      name: "name",
      required: true,
      autocomplete: "off",
      placeholder: "ci-preheat",
      "aria-label": "Token name"
    });
    const scopeBoxes = Object.entries(SCOPES3).map(([scope, what]) => {
      const id = `scope-${scope}`;
      const box = h("input", { type: "checkbox", id, name: "scopes", value: scope, checked: scope === "cluster" });
      return { scope, box, el: h("span", { class: "check", title: what }, box, h("label", { for: id }, scope)) };
    });
    const expires = h("input", {
      type: "date",
      name: "expires_at",
      value: isoDate(90),
      min: isoDate(1),
      required: true,
      "aria-label": "Expires on"
    });
    const submit = h("button", { type: "submit", class: "primary" }, "Create token");
    const reveal = h("div", { class: "reveal" });
    const form = h(
      "form",
      { class: "inline-form", id: "create-token" },
      name,
      h("span", { class: "scopes" }, "Scopes:", scopeBoxes.map((s) => s.el)),
      h("label", { class: "inline" }, "Expires ", expires),
      submit
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const scopes = scopeBoxes.filter((s) => s.box.checked).map((s) => s.scope);
      if (!scopes.length) {
        ctx.notify("Choose at least one scope for the token.", "error");
        return;
      }
      const expiresAt = (/* @__PURE__ */ new Date(`${expires.value}T23:59:59`)).toISOString();
      const body = { name: name.value.trim(), scopes, expires_at: expiresAt };
      let created;
      void ctx.act(submit, `create token \u201C${body.name}\u201D`, async () => {
        created = await api.post("/personal-access-tokens", body);
      }, `Token \u201C${body.name}\u201D created.`).then((ok) => {
        if (!ok || !created) return;
        name.value = "";
        const secret = String(created.token ?? "");
        const field2 = h("input", {
          type: "text",
          readonly: true,
          value: secret,
          class: "secret",
          "aria-label": "The new token",
          spellcheck: "false"
        });
        const copyButton = h("button", { type: "button" }, "Copy");
        copyButton.addEventListener("click", () => {
          void copy(secret, field2).then((done) => {
            copyButton.textContent = done ? "Copied" : "Select and copy it by hand";
          });
        });
        fill(reveal, h(
          "div",
          { class: "notice ok token-once" },
          h(
            "p",
            null,
            h("strong", null, "Copy this token now: it is not shown again. "),
            "Send it as ",
            h("code", null, "Authorization: Bearer <token>"),
            "."
          ),
          h(
            "div",
            { class: "inline-form" },
            field2,
            copyButton,
            h("button", { type: "button", onclick: () => reveal.replaceChildren() }, "Done")
          )
        ));
        field2.select();
      });
    });
    const table = h("div", { class: "tokens" });
    const el = h(
      "div",
      { class: "page tokens-page" },
      h("div", { class: "page-head" }, h("h1", null, "Access tokens")),
      h(
        "p",
        { class: "lede" },
        "Tokens let scripts use the API without a password. A token works only within its scopes: ",
        Object.entries(SCOPES3).map(([s, what], i) => [i ? "; " : "", h("code", null, s), ` for ${what}`]),
        "."
      ),
      h("section", { class: "card" }, h("h2", null, "New token"), form, reveal),
      h("section", { class: "card" }, h("h2", null, "Tokens"), table)
    );
    let last = "";
    async function refresh() {
      const tokens = asList(await api.get("/personal-access-tokens"));
      const key = JSON.stringify(tokens);
      if (key === last || busy(table)) return;
      last = key;
      const now = Date.now();
      fill(table, tokens.length ? h("div", { class: "table-wrap" }, h(
        "table",
        { id: "tokens-table" },
        h("thead", null, h("tr", null, ["Name", "Scopes", "Owner", "Expires", "Created", "Last used", "ID", ""].map((c) => h("th", null, c)))),
        h("tbody", null, tokens.map((t) => {
          const expired = t.expires_at ? new Date(t.expires_at).getTime() < now : false;
          return h(
            "tr",
            { class: expired || t.revoked ? "inactive" : "" },
            h("td", null, t.name),
            h("td", null, display(t.scopes)),
            h("td", null, display(t.user_name)),
            h("td", null, t.expires_at ? timeCell(t.expires_at) : "never", expired ? h("span", { class: "badge tag state-expired" }, "expired") : null),
            h("td", null, dateCell(t.created_at ?? null)),
            h("td", null, dateCell(t.last_used_at ?? null)),
            h("td", null, h("span", { class: "id" }, display(t.id))),
            h("td", { class: "actions" }, confirmButton("Revoke", "Really revoke?", () => {
              void ctx.act(
                null,
                `revoke token \u201C${t.name}\u201D`,
                () => api.del(`/personal-access-tokens/${idPath(t.id)}`),
                `Token \u201C${t.name}\u201D revoked.`
              );
            }))
          );
        }))
      )) : h("p", { class: "empty" }, "No tokens yet."));
    }
    return { title: "Tokens", el, refresh };
  }

  // src/main.ts
  var POLL_MS = 3e3;
  var ROUTES = {
    clusters: { label: "Clusters", factory: clustersPage },
    tasks: { label: "Tasks", factory: tasksPage },
    preheat: { label: "Preheat", factory: preheatPage },
    users: { label: "Users", factory: usersPage, rootOnly: { path: "/users", what: "users and their roles" } },
    tokens: { label: "Tokens", factory: tokensPage, rootOnly: { path: "/personal-access-tokens", what: "access tokens" } },
    audit: { label: "Audit log", factory: auditPage, rootOnly: { path: "/audit", what: "the audit log" } }
  };
  var DEFAULT_ROUTE = "clusters";
  var app = document.getElementById("app");
  var signInTemplate = document.getElementById("signin")?.cloneNode(true);
  function message(err) {
    return err instanceof Error ? err.message : String(err);
  }
  function sentence(text) {
    const trimmed = text.trim();
    if (!trimmed) return trimmed;
    return trimmed.charAt(0).toUpperCase() + trimmed.slice(1) + (/[.!?]$/.test(trimmed) ? "" : ".");
  }
  function showSignIn(notice) {
    stopPolling();
    document.title = "Sign in \xB7 Damselfly";
    const view = signInTemplate ? signInTemplate.cloneNode(true) : h("main", { id: "signin" }, h(
      "form",
      { id: "signin-form" },
      h("input", { name: "name", id: "signin-name" }),
      h("input", { name: "password", type: "password", id: "signin-password" }),
      h("p", { id: "signin-error", role: "alert", hidden: true }),
      h("button", { type: "submit" }, "Sign in")
    ));
    fill(app, view);
    const form = view.querySelector("form");
    const name = form.querySelector("[name=name]");
    const password = form.querySelector("[name=password]");
    const error = view.querySelector("#signin-error");
    const button = form.querySelector("button[type=submit]");
    const say = (text, kind) => {
      error.textContent = text;
      error.className = kind === "error" ? "error-text" : "info-text";
      error.hidden = !text;
    };
    if (notice) say(notice, "info");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      button.disabled = true;
      say("", "info");
      api.post("/users/signin", { name: name.value.trim(), password: password.value }).then(async (answer) => {
        setToken(answer.token);
        await start();
      }).catch((err) => {
        setToken(null);
        say(sentence(message(err)), "error");
        password.select();
      }).finally(() => {
        button.disabled = false;
      });
    });
    (name.value ? password : name).focus();
  }
  function signOut(notice) {
    setToken(null);
    shell = null;
    me = null;
    showSignIn(notice);
  }
  var pollTimer;
  var generation = 0;
  var current = null;
  function stopPolling() {
    generation++;
    window.clearTimeout(pollTimer);
    current = null;
  }
  var shell = null;
  var me = null;
  function buildShell(user) {
    const isRoot = user.role === "root";
    const nav = h("nav", { "aria-label": "Pages" }, Object.entries(ROUTES).filter(([, r]) => isRoot || !r.rootOnly).map(([key, r]) => h("a", { href: `#/${key}`, "data-route": key }, r.label)));
    const live = h("span", { class: "live", id: "live", role: "status" }, "Connecting\u2026");
    const banner = h("div", { class: "banner", id: "banner", role: "alert", hidden: true });
    const notices = h("div", { class: "notices", id: "notices", "aria-live": "polite" });
    const main = h("main", { id: "page" });
    const signOutButton = h("button", { type: "button", id: "signout", class: "link" }, "Sign out");
    signOutButton.addEventListener("click", () => {
      history.replaceState(null, "", location.pathname + location.search);
      signOut("You have signed out.");
    });
    fill(
      app,
      h(
        "header",
        { class: "top" },
        h("a", { class: "brand", href: "#/clusters" }, h("img", { src: "console/logo.svg", alt: "" }), "Damselfly"),
        nav,
        live,
        h(
          "div",
          { class: "who", id: "who" },
          h("span", { class: "name" }, user.name),
          " ",
          h("span", { class: `badge role-${user.role}`, id: "role" }, user.role),
          " ",
          signOutButton
        )
      ),
      isRoot ? null : h(
        "div",
        { class: "readonly-note", id: "readonly-note" },
        "You are signed in as a guest: you can look at everything here, but only root can change it."
      ),
      banner,
      notices,
      main
    );
    return { nav, live, banner, notices, main };
  }
  function notify(text, kind = "ok") {
    if (!shell) return;
    const close = h("button", { type: "button", class: "link close", "aria-label": "Dismiss" }, "\xD7");
    const note = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", null, text), close);
    close.addEventListener("click", () => note.remove());
    shell.notices.prepend(note);
    while (shell.notices.children.length > 4) shell.notices.lastElementChild?.remove();
    if (kind === "ok") window.setTimeout(() => note.remove(), 6e3);
  }
  function showBanner(text) {
    if (!shell) return;
    shell.banner.textContent = text ?? "";
    shell.banner.hidden = !text;
  }
  function setLive(ok, text) {
    if (!shell) return;
    shell.live.textContent = text;
    shell.live.classList.toggle("down", !ok);
  }
  function refreshSoon() {
    const gen = generation;
    window.clearTimeout(pollTimer);
    pollTimer = window.setTimeout(() => void tick(gen), 0);
  }
  async function tick(gen) {
    if (gen !== generation || !current) return;
    if (!document.hidden) {
      try {
        await current.refresh();
        if (gen !== generation) return;
        showBanner(null);
        setLive(true, `Live \xB7 ${(/* @__PURE__ */ new Date()).toLocaleTimeString()}`);
      } catch (err) {
        if (gen !== generation) return;
        if (err instanceof ApiError && err.unauthorized) {
          signOut(`Your session has ended (${err.message}). Sign in again.`);
          return;
        }
        if (err instanceof ApiError && err.forbidden) {
          showBanner(`Not allowed: ${err.message}`);
          setLive(true, `Live \xB7 ${(/* @__PURE__ */ new Date()).toLocaleTimeString()}`);
        } else {
          showBanner(`Could not refresh: ${message(err)}. Retrying every ${POLL_MS / 1e3} s.`);
          setLive(false, "Offline, retrying");
        }
      }
    }
    if (gen !== generation) return;
    window.clearTimeout(pollTimer);
    pollTimer = window.setTimeout(() => void tick(gen), POLL_MS);
  }
  function context(user) {
    return {
      me: user,
      isRoot: user.role === "root",
      notify,
      refreshSoon,
      async act(button, what, action, done) {
        if (button) button.disabled = true;
        try {
          await action();
          if (done) notify(done, "ok");
          refreshSoon();
          return true;
        } catch (err) {
          if (err instanceof ApiError && err.unauthorized) {
            signOut(`Your session has ended (${err.message}). Sign in again.`);
          } else if (err instanceof ApiError && err.forbidden) {
            notify(`Not allowed to ${what}: ${err.message}`, "error");
          } else {
            notify(`Could not ${what}: ${message(err)}`, "error");
          }
          return false;
        } finally {
          if (button) button.disabled = false;
        }
      }
    };
  }
  function refusedPage(route2) {
    const { path, what } = route2.rootOnly;
    const answer = h("p", { class: "refusal" }, "Asking the manager\u2026");
    return {
      title: route2.label,
      el: h(
        "div",
        { class: "page refused" },
        h("h1", null, route2.label),
        h("p", { class: "lede" }, `Only root may see ${what}.`),
        answer
      ),
      async refresh() {
        try {
          await api.get(path);
          answer.textContent = "The manager let you read this, but the console shows it to root only.";
        } catch (err) {
          if (err instanceof ApiError && err.forbidden) answer.textContent = `The manager refused: ${err.message}`;
          else throw err;
        }
      }
    };
  }
  function route() {
    if (!shell || !me) return;
    const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
    const key = path && path in ROUTES ? path : DEFAULT_ROUTE;
    const r = ROUTES[key];
    stopPolling();
    showBanner(null);
    shell.notices.replaceChildren();
    const page = r.rootOnly && me.role !== "root" ? refusedPage(r) : r.factory(context(me), new URLSearchParams(search ?? ""));
    for (const link of shell.nav.querySelectorAll("a")) {
      if (link.dataset.route === key) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${page.title} \xB7 Damselfly`;
    fill(shell.main, page.el);
    current = page;
    void tick(generation);
  }
  async function start() {
    if (!getToken()) {
      showSignIn();
      return;
    }
    fill(app, h("p", { class: "loading" }, "Loading\u2026"));
    try {
      me = await api.get("/users/me");
    } catch (err) {
      if (err instanceof ApiError && err.unauthorized) signOut("Your session has ended. Sign in again.");
      else {
        fill(app, h(
          "div",
          { class: "fatal card" },
          h("h1", null, "The manager does not answer"),
          h("p", null, message(err)),
          h("button", { type: "button", class: "primary", onclick: () => void start() }, "Try again")
        ));
      }
      return;
    }
    shell = buildShell(me);
    route();
  }
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && current) refreshSoon();
  });
  void start();
})();
