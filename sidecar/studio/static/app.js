// The studio's shell: the views behind the #/hash, the theme, the one /events connection, and the
// message shown when the daemon wants its token (open the studio with `sidecar studio`).
import { api, ApiError, Events } from "./api.js";
import { h, replace } from "./dom.js";

const VIEWS = {
  now: () => import("./views/now.js"),
  generate: () => import("./views/generate.js"),
  pages: () => import("./views/pages.js"),
  loras: () => import("./views/loras.js"),
  dataset: () => import("./views/dataset.js"),
  doctor: () => import("./views/doctor.js"),
};

const root = document.getElementById("view");
const events = new Events();
const ctx = { events, config: null };
let unmount = null;

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("studio.theme", theme);
}

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { name: VIEWS[name] ? name : "now", args: rest.map(decodeURIComponent) };
}

async function show() {
  const { name, args } = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  if (unmount) { unmount(); unmount = null; }
  replace(root, h("p", { class: "muted" }, "loading…"));
  const mod = await VIEWS[name]();
  if (route().name !== name) return; // the artist moved on meanwhile
  root.replaceChildren();
  root.dataset.view = name;
  unmount = mod.mount(root, ctx, args) || null;
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · plasma studio`;
}

function needsToken(err) {
  replace(root, h("section", { class: "card notice" },
    h("h2", {}, "This daemon needs its token"),
    h("p", {}, "Open the studio from a terminal with ", h("code", {}, "sidecar studio"),
      ": it signs this browser in (a cookie only this daemon's own pages can use) and opens the page."),
    h("p", { class: "muted" }, err.message)));
}

async function start() {
  setTheme(localStorage.getItem("studio.theme") || "dark");
  document.getElementById("theme").addEventListener("click", () =>
    setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  const live = document.getElementById("live");
  events.onstate = (state) => { live.textContent = state; live.dataset.state = state; };
  try {
    ctx.config = await api("/studio/config");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return needsToken(err);
    replace(root, h("section", { class: "card notice" }, h("h2", {}, "The daemon does not answer"),
      h("p", {}, err.message)));
    return;
  }
  events.connect();
  window.addEventListener("hashchange", show);
  show();
}

start();
