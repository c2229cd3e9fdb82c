// Users and their roles (root only): create, change role, set a password, delete.

import { api, asList, idPath, type User } from "../api";
import type { Ctx, Page } from "../context";
import { confirmButton, dateCell, display, fill, h } from "../dom";

export const ROLES = ["guest", "root"];
export const MIN_PASSWORD = 12;

function roleSelect(value: string, attrs: Record<string, unknown> = {}): HTMLSelectElement {
  const select = h("select", attrs, ROLES.map((r) => h("option", { value: r }, r)));
  select.value = value;
  return select;
}

/**
 * A table is redrawn by polling only while no one is typing or choosing in it (a focused
 * button does not count: the one just clicked to delete a row keeps the focus).
 */
export function busy(el: Element): boolean {
  const active = document.activeElement;
  const typing = active instanceof HTMLInputElement || active instanceof HTMLSelectElement || active instanceof HTMLTextAreaElement;
  return (typing && el.contains(active)) || el.querySelector(".editing") !== null;
}

export function usersPage(ctx: Ctx): Page {
  const name = h("input", { type: "text", name: "name", required: true, autocomplete: "off", "aria-label": "Name" ,
    placeholder: "name" });
  const password = h("input", { type: "password", name: "password", required: true, minlength: MIN_PASSWORD,
    autocomplete: "new-password", placeholder: `password, ${MIN_PASSWORD}+ characters`, "aria-label": "Password" });
  const role = roleSelect("guest", { name: "role", "aria-label": "Role" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create user");
  const form = h("form", { class: "inline-form", id: "create-user" }, name, password, role, submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), password: password.value, role: role.value };
    void ctx.act(submit, `create user “${body.name}”`, () => api.post("/users", body),
      `User “${body.name}” created with role ${body.role}.`).then((ok) => {
      if (ok) {
        name.value = "";
        password.value = "";
      }
    });
  });

  const table = h("div", { class: "users" });
  const el = h("div", { class: "page users-page" },
    h("div", { class: "page-head" }, h("h1", null, "Users")),
    h("p", { class: "lede" }, "Root may change anything; a guest may look at clusters and tasks but change nothing. ",
      `Passwords need at least ${MIN_PASSWORD} characters.`),
    h("section", { class: "card" }, h("h2", null, "New user"), form),
    h("section", { class: "card" }, h("h2", null, "All users"), table));

  let last = "";

  function row(user: User): HTMLElement {
    const self = String(user.id) === String(ctx.me.id);
    const select = roleSelect(user.role, { "aria-label": `Role of ${user.name}` });
    select.addEventListener("change", () => {
      const to = select.value;
      void ctx.act(null, `change the role of “${user.name}”`, () => api.patch(`/users/${idPath(user.id)}`, { role: to }),
        `“${user.name}” is now ${to}.`).then((ok) => {
        if (!ok) select.value = user.role;
      });
    });
    const actions = h("td", { class: "actions" });
    const setPassword = h("button", { type: "button" }, "Set password");
    setPassword.addEventListener("click", () => {
      const input = h("input", { type: "password", minlength: MIN_PASSWORD, autocomplete: "new-password",
        placeholder: "new password", "aria-label": `New password for ${user.name}` });
      const save = h("button", { type: "submit", class: "primary" }, "Save");
      const edit = h("form", { class: "inline-form editing" }, input, save,
        h("button", { type: "button", onclick: () => { fill(actions, ...buttons); last = ""; } }, "Cancel"));
      edit.addEventListener("submit", (event) => {
        event.preventDefault();
        void ctx.act(save, `set the password of “${user.name}”`,
          () => api.patch(`/users/${idPath(user.id)}`, { password: input.value }),
          `Password of “${user.name}” changed.`).then((ok) => {
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
      void ctx.act(null, `delete user “${user.name}”`, () => api.del(`/users/${idPath(user.id)}`),
        `User “${user.name}” deleted.`);
    })].filter((b): b is HTMLButtonElement => b !== null);
    fill(actions, ...buttons);
    return h("tr", { "data-name": user.name },
      h("td", null, user.name, self ? h("span", { class: "you" }, " (you)") : null),
      h("td", null, select),
      h("td", null, h("span", { class: "id" }, display(user.id))),
      h("td", null, dateCell(user.created_at ?? null)),
      actions);
  }

  async function refresh(): Promise<void> {
    const users = asList<User>(await api.get<unknown>("/users"));
    const key = JSON.stringify(users);
    if (key === last || busy(table)) return;
    last = key;
    fill(table, users.length ? h("div", { class: "table-wrap" }, h("table", { id: "users-table" },
      h("thead", null, h("tr", null, ["Name", "Role", "ID", "Created", ""].map((c) => h("th", null, c)))),
      h("tbody", null, users.map(row)))) : h("p", { class: "empty" }, "No users."));
  }

  return { title: "Users", el, refresh };
}
