// Tables for answers whose shape the console does not fix in advance (tasks, audit):
// one column per key, each cell read by what its key and value say it is.

import { display, formatBytes, formatTime, h, humanize, relativeTime, stateBadge, timeCell, type Child } from "./dom";

type Row = Record<string, unknown>;

const PROGRESS_KEYS = ["progress", "percent", "percentage", "ratio", "fraction"];
const DONE_KEYS = ["completed_bytes", "downloaded_bytes", "done_bytes", "bytes_done", "finished_pieces", "completed_pieces",
  "pieces_done", "have_pieces"];
const TOTAL_KEYS = ["total_bytes", "content_length", "size", "total_pieces", "pieces_total", "piece_count"];

function isTimeKey(key: string): boolean {
  return /(_at|^at|^time|timestamp|^when|^date)$/i.test(key);
}

function isBytesKey(key: string): boolean {
  return /bytes|^size$|content_length/i.test(key);
}

/** A fraction 0..1 from a progress-like value (a percentage over 1 is read as percent). */
function fraction(value: unknown): number | null {
  if (typeof value !== "number" || !Number.isFinite(value)) return null;
  return Math.max(0, Math.min(1, value > 1 ? value / 100 : value));
}

function progressCell(f: number | null, text?: string): Child {
  if (f === null) return "—";
  return h("span", { class: "progress" }, h("progress", { max: 1, value: f }), ` ${text ?? `${Math.round(f * 100)}%`}`);
}

export interface AutoTableOptions {
  /** Columns shown first, in this order, when present. */
  preferred?: string[];
  /** Columns never shown. */
  hidden?: string[];
  /** "absolute" shows the date and time (a log); "relative" shows "12 s ago" (live state). */
  times?: "absolute" | "relative";
  labels?: Record<string, string>;
}

export function cell(key: string, value: unknown, options: AutoTableOptions = {}): Child {
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

export function columnsOf(rows: Row[], options: AutoTableOptions = {}): string[] {
  const seen: string[] = [];
  for (const row of rows) for (const key of Object.keys(row)) if (!seen.includes(key)) seen.push(key);
  const hidden = new Set(options.hidden ?? []);
  const preferred = (options.preferred ?? []).filter((k) => seen.includes(k));
  return [...preferred, ...seen.filter((k) => !preferred.includes(k))].filter((k) => !hidden.has(k));
}

export function autoTable(rows: Row[], options: AutoTableOptions = {}): HTMLElement {
  const columns = columnsOf(rows, options);
  const done = DONE_KEYS.find((k) => columns.includes(k));
  const total = TOTAL_KEYS.find((k) => columns.includes(k));
  const derived = done && total && !columns.some((k) => PROGRESS_KEYS.includes(k));
  const numeric = (key: string) => rows.some((r) => typeof r[key] === "number") && !PROGRESS_KEYS.includes(key);
  return h("div", { class: "table-wrap" },
    h("table", { class: "auto" },
      h("thead", null, h("tr", null,
        columns.map((k) => h("th", numeric(k) ? { class: "num" } : null, options.labels?.[k] ?? humanize(k))),
        derived ? h("th", null, "Progress") : null)),
      h("tbody", null, rows.map((row) => h("tr", null,
        columns.map((k) => h("td", numeric(k) ? { class: "num" } : null, cell(k, row[k], options))),
        derived ? h("td", null, (() => {
          const d = row[done as string];
          const t = row[total as string];
          return typeof d === "number" && typeof t === "number" && t > 0 ? progressCell(fraction(d / t)) : "—";
        })()) : null)))));
}

function isRowList(value: unknown): value is Row[] {
  return Array.isArray(value) && value.length > 0 && value.every((v) => v !== null && typeof v === "object" && !Array.isArray(v));
}

/**
 * Whatever JSON came back, readable: a list of objects as a table, an object as its plain
 * fields followed by a table for each list inside it, anything else as text.
 */
export function renderAny(value: unknown, options: AutoTableOptions = {}, empty = "Nothing."): HTMLElement {
  if (Array.isArray(value)) {
    if (!value.length) return h("p", { class: "empty" }, empty);
    if (isRowList(value)) return autoTable(value, options);
    return h("ul", null, value.map((v) => h("li", null, display(v))));
  }
  if (value !== null && typeof value === "object") {
    const obj = value as Row;
    const plain = Object.entries(obj).filter(([, v]) => v === null || typeof v !== "object" ||
      (Array.isArray(v) && v.every((x) => typeof x !== "object")));
    const nested = Object.entries(obj).filter(([k]) => !plain.some(([p]) => p === k));
    return h("div", { class: "any" },
      plain.length ? h("dl", { class: "facts" }, plain.map(([k, v]) =>
        h("div", null, h("dt", null, options.labels?.[k] ?? humanize(k)), h("dd", null, cell(k, v, options))))) : null,
      nested.map(([k, v]) => h("div", { class: "nested" }, h("h3", null, options.labels?.[k] ?? humanize(k)),
        renderAny(v, options, empty))));
  }
  return h("p", null, display(value));
}
