// The console's shell: sign-in, the navigation, one page at a time polled every few
// seconds, and every message said in words.

import { api, ApiError, getToken, setToken, type Me, type SignIn } from "./api";
import type { Ctx, Page, PageFactory } from "./context";
import { fill, h } from "./dom";
import { auditPage } from "./pages/audit";
import { clustersPage } from "./pages/clusters";
import { preheatPage } from "./pages/preheat";
import { tasksPage } from "./pages/tasks";
import { tokensPage } from "./pages/tokens";
import { usersPage } from "./pages/users";

const POLL_MS = 3000;

interface Route {
  label: string;
  factory: PageFactory;
  /** Only root may see it: a guest gets the API's refusal, in words, instead. */
  rootOnly?: { path: string; what: string };
}

const ROUTES: Record<string, Route> = {
  clusters: { label: "Clusters", factory: clustersPage },
  tasks: { label: "Tasks", factory: tasksPage },
  preheat: { label: "Preheat", factory: preheatPage },
  users: { label: "Users", factory: usersPage, rootOnly: { path: "/users", what: "users and their roles" } },
  tokens: { label: "Tokens", factory: tokensPage, rootOnly: { path: "/personal-access-tokens", what: "access tokens" } },
  audit: { label: "Audit log", factory: auditPage, rootOnly: { path: "/audit", what: "the audit log" } },
};
const DEFAULT_ROUTE = "clusters";

const app = document.getElementById("app") as HTMLElement;
// The sign-in form is in index.html itself, so a visitor sees it before any script runs;
// it is kept as the template for every later sign-in.
const signInTemplate = (document.getElementById("signin") as HTMLElement | null)?.cloneNode(true) as HTMLElement | null;

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** "wrong name or password" → "Wrong name or password." */
function sentence(text: string): string {
  const trimmed = text.trim();
  if (!trimmed) return trimmed;
  return trimmed.charAt(0).toUpperCase() + trimmed.slice(1) + (/[.!?]$/.test(trimmed) ? "" : ".");
}

// ---- sign-in ---------------------------------------------------------------------------

function showSignIn(notice?: string): void {
  stopPolling();
  document.title = "Sign in · Damselfly";
  const view = signInTemplate ? (signInTemplate.cloneNode(true) as HTMLElement)
    : h("main", { id: "signin" }, h("form", { id: "signin-form" },
      h("input", { name: "name", id: "signin-name" }), h("input", { name: "password", type: "password", id: "signin-password" }),
      h("p", { id: "signin-error", role: "alert", hidden: true }), h("button", { type: "submit" }, "Sign in")));
  fill(app, view);
  const form = view.querySelector("form") as HTMLFormElement;
  const name = form.querySelector<HTMLInputElement>("[name=name]") as HTMLInputElement;
  const password = form.querySelector<HTMLInputElement>("[name=password]") as HTMLInputElement;
  const error = view.querySelector<HTMLElement>("#signin-error") as HTMLElement;
  const button = form.querySelector<HTMLButtonElement>("button[type=submit]") as HTMLButtonElement;
  const say = (text: string, kind: "error" | "info") => {
    error.textContent = text;
    error.className = kind === "error" ? "error-text" : "info-text";
    error.hidden = !text;
  };
  if (notice) say(notice, "info");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    button.disabled = true;
    say("", "info");
    api.post<SignIn>("/users/signin", { name: name.value.trim(), password: password.value })
      .then(async (answer) => {
        setToken(answer.token);
        await start();
      })
      .catch((err) => {
        setToken(null);
        say(sentence(message(err)), "error");
        password.select();
      })
      .finally(() => { button.disabled = false; });
  });
  (name.value ? password : name).focus();
}

function signOut(notice?: string): void {
  setToken(null);
  shell = null;
  me = null;
  showSignIn(notice);
}

// ---- the shell -------------------------------------------------------------------------

let pollTimer: number | undefined;
let generation = 0;
let current: Page | null = null;

function stopPolling(): void {
  generation++;
  window.clearTimeout(pollTimer);
  current = null;
}

interface Shell {
  nav: HTMLElement;
  live: HTMLElement;
  banner: HTMLElement;
  notices: HTMLElement;
  main: HTMLElement;
}

let shell: Shell | null = null;
let me: Me | null = null;

function buildShell(user: Me): Shell {
  const isRoot = user.role === "root";
  const nav = h("nav", { "aria-label": "Pages" }, Object.entries(ROUTES)
    .filter(([, r]) => isRoot || !r.rootOnly)
    .map(([key, r]) => h("a", { href: `#/${key}`, "data-route": key }, r.label)));
  const live = h("span", { class: "live", id: "live", role: "status" }, "Connecting…");
  const banner = h("div", { class: "banner", id: "banner", role: "alert", hidden: true });
  const notices = h("div", { class: "notices", id: "notices", "aria-live": "polite" });
  const main = h("main", { id: "page" });
  const signOutButton = h("button", { type: "button", id: "signout", class: "link" }, "Sign out");
  signOutButton.addEventListener("click", () => {
    history.replaceState(null, "", location.pathname + location.search); // the next user starts at the top
    signOut("You have signed out.");
  });
  fill(app,
    h("header", { class: "top" },
      h("a", { class: "brand", href: "#/clusters" }, h("img", { src: "console/logo.svg", alt: "" }), "Damselfly"),
      nav, live,
      h("div", { class: "who", id: "who" }, h("span", { class: "name" }, user.name), " ",
        h("span", { class: `badge role-${user.role}`, id: "role" }, user.role), " ", signOutButton)),
    isRoot ? null : h("div", { class: "readonly-note", id: "readonly-note" },
      "You are signed in as a guest: you can look at everything here, but only root can change it."),
    banner, notices, main);
  return { nav, live, banner, notices, main };
}

function notify(text: string, kind: "ok" | "error" = "ok"): void {
  if (!shell) return;
  const close = h("button", { type: "button", class: "link close", "aria-label": "Dismiss" }, "×");
  const note = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, h("span", null, text), close);
  close.addEventListener("click", () => note.remove());
  shell.notices.prepend(note);
  while (shell.notices.children.length > 4) shell.notices.lastElementChild?.remove();
  if (kind === "ok") window.setTimeout(() => note.remove(), 6000);
}

function showBanner(text: string | null): void {
  if (!shell) return;
  shell.banner.textContent = text ?? "";
  shell.banner.hidden = !text;
}

function setLive(ok: boolean, text: string): void {
  if (!shell) return;
  shell.live.textContent = text;
  shell.live.classList.toggle("down", !ok);
}

function refreshSoon(): void {
  const gen = generation;
  window.clearTimeout(pollTimer);
  pollTimer = window.setTimeout(() => void tick(gen), 0);
}

async function tick(gen: number): Promise<void> {
  if (gen !== generation || !current) return;
  if (!document.hidden) {
    try {
      await current.refresh();
      if (gen !== generation) return;
      showBanner(null);
      setLive(true, `Live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (gen !== generation) return;
      if (err instanceof ApiError && err.unauthorized) {
        signOut(`Your session has ended (${err.message}). Sign in again.`);
        return;
      }
      if (err instanceof ApiError && err.forbidden) {
        showBanner(`Not allowed: ${err.message}`);
        setLive(true, `Live · ${new Date().toLocaleTimeString()}`);
      } else {
        showBanner(`Could not refresh: ${message(err)}. Retrying every ${POLL_MS / 1000} s.`);
        setLive(false, "Offline, retrying");
      }
    }
  }
  if (gen !== generation) return;
  window.clearTimeout(pollTimer);
  pollTimer = window.setTimeout(() => void tick(gen), POLL_MS);
}

function context(user: Me): Ctx {
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
    },
  };
}

/** What a guest sees for a root-only page: the manager's own refusal, in words. */
function refusedPage(route: Route): Page {
  const { path, what } = route.rootOnly as { path: string; what: string };
  const answer = h("p", { class: "refusal" }, "Asking the manager…");
  return {
    title: route.label,
    el: h("div", { class: "page refused" }, h("h1", null, route.label),
      h("p", { class: "lede" }, `Only root may see ${what}.`), answer),
    async refresh() {
      try {
        await api.get<unknown>(path);
        answer.textContent = "The manager let you read this, but the console shows it to root only.";
      } catch (err) {
        if (err instanceof ApiError && err.forbidden) answer.textContent = `The manager refused: ${err.message}`;
        else throw err;
      }
    },
  };
}

function route(): void {
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
  document.title = `${page.title} · Damselfly`;
  fill(shell.main, page.el);
  current = page;
  void tick(generation);
}

async function start(): Promise<void> {
  if (!getToken()) {
    showSignIn();
    return;
  }
  fill(app, h("p", { class: "loading" }, "Loading…"));
  try {
    me = await api.get<Me>("/users/me");
  } catch (err) {
    if (err instanceof ApiError && err.unauthorized) signOut("Your session has ended. Sign in again.");
    else {
      fill(app, h("div", { class: "fatal card" }, h("h1", null, "The manager does not answer"),
        h("p", null, message(err)), h("button", { type: "button", class: "primary", onclick: () => void start() }, "Try again")));
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
