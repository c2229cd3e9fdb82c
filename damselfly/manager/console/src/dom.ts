// Building DOM nodes without a framework, and the formats every page shares.

export type Child = Node | string | number | null | undefined | false | Child[];
export type Attrs = Record<string, unknown>;

/** An element: attributes (``onclick`` and the like become listeners), then children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value as EventListener);
    } else if (key === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(value);
    } else if (key === "checked" && el instanceof HTMLInputElement) {
      el.checked = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatBytes(value: unknown): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  let n = value;
  let unit = 0;
  while (Math.abs(n) >= 1024 && unit < UNITS.length - 1) {
    n /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${UNITS[unit]}`;
}

export function parseTime(value: unknown): Date | null {
  if (typeof value !== "string" && typeof value !== "number") return null;
  const date = new Date(typeof value === "number" && value < 1e12 ? value * 1000 : value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "12 s ago", "in 3 days": how far a time is from now, in words. */
export function relativeTime(value: unknown, now: number = Date.now()): string {
  const date = parseTime(value);
  if (!date) return "never";
  const seconds = Math.round((date.getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  const [amount, unit] =
    abs < 60 ? [abs, "s"] :
    abs < 3600 ? [Math.round(abs / 60), "min"] :
    abs < 86400 ? [Math.round(abs / 3600), "h"] :
    [Math.round(abs / 86400), abs < 2 * 86400 ? "day" : "days"];
  if (abs < 2) return "just now";
  return seconds < 0 ? `${amount} ${unit} ago` : `in ${amount} ${unit}`;
}

export function formatTime(value: unknown): string {
  const date = parseTime(value);
  return date ? date.toLocaleString() : "—";
}

/** A time cell: relative words, the exact time on hover. */
export function timeCell(value: unknown): HTMLElement {
  const date = parseTime(value);
  return h("time", date ? { datetime: date.toISOString(), title: date.toLocaleString() } : null,
    date ? relativeTime(value) : "—");
}

/** A date cell for records that stand still (created, last used): the date and time, "3 days ago" on hover. */
export function dateCell(value: unknown): HTMLElement {
  const date = parseTime(value);
  return h("time", date ? { datetime: date.toISOString(), title: relativeTime(value) } : null, date ? formatTime(value) : "—");
}

export function stateBadge(state: unknown): HTMLElement {
  const text = typeof state === "string" && state ? state : "unknown";
  return h("span", { class: `badge state-${text.replace(/[^a-z-]/gi, "")}` }, text);
}

/** What a value reads as in a table cell: text for scalars, compact JSON for the rest. */
export function display(value: unknown): string {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value) && value.every((v) => typeof v !== "object" || v === null)) {
    return value.length ? value.map(String).join(", ") : "—";
  }
  return JSON.stringify(value);
}

/** "upload_rate" → "Upload rate". */
export function humanize(key: string): string {
  const words = key.replace(/_/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** A button that asks once more before it acts: the first click arms it for a few seconds. */
export function confirmButton(label: string, confirmLabel: string, action: () => void): HTMLButtonElement {
  let armed: number | undefined;
  const button = h("button", { type: "button", class: "danger" }, label);
  button.addEventListener("click", () => {
    if (armed !== undefined) {
      window.clearTimeout(armed);
      armed = undefined;
      button.textContent = label;
      button.classList.remove("armed");
      action();
      return;
    }
    button.textContent = confirmLabel;
    button.classList.add("armed");
    armed = window.setTimeout(() => {
      armed = undefined;
      button.textContent = label;
      button.classList.remove("armed");
    }, 4000);
  });
  return button;
}
