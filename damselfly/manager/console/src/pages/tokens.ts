// Personal access tokens (root only): for scripts and CI. A new token is shown once.

import { api, asList, idPath, type AccessToken } from "../api";
import type { Ctx, Page } from "../context";
import { confirmButton, dateCell, display, fill, h, timeCell } from "../dom";
import { busy } from "./users";

export const SCOPES: Record<string, string> = {
  cluster: "clusters, their configuration and members",
  job: "jobs such as preheat",
};

function isoDate(days: number): string {
  const d = new Date(Date.now() + days * 86400_000);
  return d.toISOString().slice(0, 10);
}

async function copy(text: string, input: HTMLInputElement): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input.select();
    return document.execCommand("copy");
  }
}

export function tokensPage(ctx: Ctx): Page {
  const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off", placeholder: "ci-preheat",
    "aria-label": "Token name" });
  const scopeBoxes = Object.entries(SCOPES).map(([scope, what]) => {
    const id = `scope-${scope}`;
    const box = h("input", { type: "checkbox", id, name: "scopes", value: scope, checked: scope === "cluster" });
    return { scope, box, el: h("span", { class: "check", title: what }, box, h("label", { for: id }, scope)) };
  });
  const expires = h("input", { type: "date", name: "expires_at", value: isoDate(90), min: isoDate(1),
    required: true, "aria-label": "Expires on" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create token");
  const reveal = h("div", { class: "reveal" });
  const form = h("form", { class: "inline-form", id: "create-token" }, name,
    h("span", { class: "scopes" }, "Scopes:", scopeBoxes.map((s) => s.el)),
    h("label", { class: "inline" }, "Expires ", expires), submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const scopes = scopeBoxes.filter((s) => s.box.checked).map((s) => s.scope);
    if (!scopes.length) {
      ctx.notify("Choose at least one scope for the token.", "error");
      return;
    }
    // The end of the chosen day, in this browser's time zone.
    const expiresAt = new Date(`${expires.value}T23:59:59`).toISOString();
    const body = { name: name.value.trim(), scopes, expires_at: expiresAt };
    let created: AccessToken | undefined;
    void ctx.act(submit, `create token “${body.name}”`, async () => {
      created = await api.post<AccessToken>("/personal-access-tokens", body);
    }, `Token “${body.name}” created.`).then((ok) => {
      if (!ok || !created) return;
      name.value = "";
      const secret = String(created.token ?? "");
      const field = h("input", { type: "text", readonly: true, value: secret, class: "secret", "aria-label": "The new token",
        spellcheck: "false" });
      const copyButton = h("button", { type: "button" }, "Copy");
      copyButton.addEventListener("click", () => {
        void copy(secret, field).then((done) => { copyButton.textContent = done ? "Copied" : "Select and copy it by hand"; });
      });
      fill(reveal, h("div", { class: "notice ok token-once" },
        h("p", null, h("strong", null, "Copy this token now: it is not shown again. "),
          "Send it as ", h("code", null, "Authorization: Bearer <token>"), "."),
        h("div", { class: "inline-form" }, field, copyButton,
          h("button", { type: "button", onclick: () => reveal.replaceChildren() }, "Done"))));
      field.select();
    });
  });

  const table = h("div", { class: "tokens" });
  const el = h("div", { class: "page tokens-page" },
    h("div", { class: "page-head" }, h("h1", null, "Access tokens")),
    h("p", { class: "lede" }, "Tokens let scripts use the API without a password. A token works only within its scopes: ",
      Object.entries(SCOPES).map(([s, what], i) => [i ? "; " : "", h("code", null, s), ` for ${what}`]), "."),
    h("section", { class: "card" }, h("h2", null, "New token"), form, reveal),
    h("section", { class: "card" }, h("h2", null, "Tokens"), table));

  let last = "";
  async function refresh(): Promise<void> {
    const tokens = asList<AccessToken>(await api.get<unknown>("/personal-access-tokens"));
    const key = JSON.stringify(tokens);
    if (key === last || busy(table)) return;
    last = key;
    const now = Date.now();
    fill(table, tokens.length ? h("div", { class: "table-wrap" }, h("table", { id: "tokens-table" },
      h("thead", null, h("tr", null, ["Name", "Scopes", "Owner", "Expires", "Created", "Last used", "ID", ""].map((c) => h("th", null, c)))),
      h("tbody", null, tokens.map((t) => {
        const expired = t.expires_at ? new Date(t.expires_at).getTime() < now : false;
        return h("tr", { class: expired || t.revoked ? "inactive" : "" },
          h("td", null, t.name),
          h("td", null, display(t.scopes)),
          h("td", null, display(t.user_name)),
          h("td", null, t.expires_at ? timeCell(t.expires_at) : "never", expired ? h("span", { class: "badge tag state-expired" }, "expired") : null),
          h("td", null, dateCell(t.created_at ?? null)),
          h("td", null, dateCell(t.last_used_at ?? null)),
          h("td", null, h("span", { class: "id" }, display(t.id))),
          h("td", { class: "actions" }, confirmButton("Revoke", "Really revoke?", () => {
            void ctx.act(null, `revoke token “${t.name}”`, () => api.del(`/personal-access-tokens/${idPath(t.id)}`),
              `Token “${t.name}” revoked.`);
          })));
      })))) : h("p", { class: "empty" }, "No tokens yet."));
  }

  return { title: "Tokens", el, refresh };
}
