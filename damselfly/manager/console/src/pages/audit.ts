// The audit log (root only): every write, by whom, when and from where, newest first.

import { api, asList } from "../api";
import { autoTable } from "../autotable";
import type { Ctx, Page } from "../context";
import { fill, h, parseTime } from "../dom";

const PAGE = 200;
const SHOWN = 1000;
const TIME_KEYS = ["at", "created_at", "time", "timestamp"];
type Entry = Record<string, unknown>;

export function auditPage(ctx: Ctx): Page {
  const filter = h("input", { type: "search", placeholder: "Filter: a name, a path, an address…", "aria-label": "Filter",
    autocomplete: "off" });
  const table = h("div", { class: "audit" });
  const older = h("button", { type: "button", hidden: true }, "Load older entries");
  const el = h("div", { class: "page audit-page" },
    h("div", { class: "page-head" }, h("h1", null, "Audit log")),
    h("p", { class: "lede" }, "Every change made through the API: who, when, from where, and what."),
    h("div", { class: "inline-form" }, filter),
    h("section", { class: "card" }, table, older));

  let newest: Entry[] = [];
  let previous: Entry[] = []; // pages loaded with "Load older", kept while the newest page refreshes
  let entries: Entry[] = [];
  const idOf = (e: Entry) => (typeof e.id === "number" ? e.id : null);

  function merge(): void {
    const seen = new Set<unknown>();
    const all = [...newest, ...previous].filter((e) => {
      const id = idOf(e);
      if (id === null) return true;
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
    const timeKey = TIME_KEYS.find((k) => all.some((e) => parseTime(e[k])));
    entries = all.every((e) => idOf(e) !== null)
      ? all.sort((a, b) => (idOf(b) as number) - (idOf(a) as number))
      : timeKey ? all.sort((a, b) => (parseTime(b[timeKey])?.getTime() ?? 0) - (parseTime(a[timeKey])?.getTime() ?? 0))
      : all;
    draw();
  }

  older.addEventListener("click", () => {
    const ids = entries.map(idOf).filter((i): i is number => i !== null);
    if (!ids.length) return;
    older.disabled = true;
    api.get<unknown>(`/audit?limit=${PAGE}&before_id=${Math.min(...ids)}`)
      .then((answer) => {
        const page = asList<Entry>(answer);
        previous = [...previous, ...page];
        older.hidden = page.length < PAGE;
        merge();
      })
      .catch((err) => ctx.notify(`Could not load older entries: ${(err as Error).message}`, "error"))
      .finally(() => { older.disabled = false; });
  });

  function draw(): void {
    const needle = filter.value.trim().toLowerCase();
    const rows = needle ? entries.filter((e) => JSON.stringify(e).toLowerCase().includes(needle)) : entries;
    if (!rows.length) {
      fill(table, h("p", { class: "empty" }, entries.length ? "Nothing matches the filter." : "Nothing has been changed yet."));
      return;
    }
    fill(table,
      autoTable(rows.slice(0, SHOWN), {
        preferred: [...TIME_KEYS, "actor", "user", "user_name", "credential", "method", "action", "path", "status", "address",
          "summary"],
        hidden: ["id"],
        times: "absolute",
      }),
      rows.length > SHOWN ? h("p", { class: "muted" }, `The newest ${SHOWN} of ${rows.length}; filter to narrow them.`) : null);
  }
  filter.addEventListener("input", draw);

  let last = "";
  async function refresh(): Promise<void> {
    const list = asList<Entry>(await api.get<unknown>(`/audit?limit=${PAGE}`));
    const key = JSON.stringify(list);
    if (key === last) return;
    last = key;
    newest = list;
    if (!previous.length) older.hidden = list.length < PAGE || list.every((e) => idOf(e) === null);
    merge();
  }

  return { title: "Audit log", el, refresh };
}
