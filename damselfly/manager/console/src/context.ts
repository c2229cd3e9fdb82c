// What the shell hands each page.

import type { Me } from "./api";

export interface Ctx {
  me: Me;
  isRoot: boolean;
  /** A message at the top of the page: "ok" fades, "error" stays until dismissed. */
  notify(text: string, kind?: "ok" | "error"): void;
  /**
   * Run a write action: ``button`` is busy meanwhile, success says ``done``, a failure
   * says what could not be done and the API's words (a 401 signs out).
   */
  act(button: HTMLButtonElement | null, what: string, action: () => Promise<unknown>, done?: string): Promise<boolean>;
  /** Poll the page now instead of at the next tick. */
  refreshSoon(): void;
}

export interface Page {
  title: string;
  el: HTMLElement;
  /** Fetch and show the latest state; throws an ApiError the shell reports. */
  refresh(): Promise<void>;
}

export type PageFactory = (ctx: Ctx, query: URLSearchParams) => Page;
