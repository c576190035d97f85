// The studio's shell: the views behind the #/hash, the theme, the one /events connection, the banner
// that says when the daemon stopped answering (and the page greyed and still meanwhile), and the message
// shown when the daemon wants its token (open the studio with `sidecar studio`).
import { api, ApiError, Events } from "./api.js";
import { h, replace, tickTimes } from "./dom.js";

const VIEWS = {
  now: () => import("./views/now.js"),
  generate: () => import("./views/generate.js"),
  pages: () => import("./views/pages.js"),
  concept: () => import("./views/concept.js"),
  explorer: () => import("./views/explorer.js"),
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
  const button = document.getElementById("theme");
  button.setAttribute("aria-pressed", String(theme === "light"));
  button.title = theme === "light" ? "switch to the dark theme" : "switch to the light theme";
}

// The daemon went away: say since when, grey the live states (they are no longer true) and disable
// every action (it could not reach the daemon). The buttons this disabled are enabled again on
// reconnect, when the view is drawn again from the daemon's answers anyway.
const banner = document.getElementById("offline");
let bannerTimer = null;
function disableActions() {
  for (const el of root.querySelectorAll("button:not(:disabled), input[type=submit]:not(:disabled)")) {
    el.disabled = true;
    el.dataset.offlineDisabled = "1";
  }
}
// A view drawn while offline (another tab of the studio picked) gets its buttons disabled too.
const watcher = new MutationObserver(disableActions);

function offline(since) {
  document.body.classList.add("offline");
  disableActions();
  watcher.observe(root, { childList: true, subtree: true });
  const at = since.toLocaleTimeString();
  const say = () => {
    const s = Math.round((Date.now() - since) / 1000);
    banner.querySelector(".since").textContent = `The daemon has not answered since ${at} (${s} s).`;
  };
  say();
  banner.hidden = false;
  clearInterval(bannerTimer);
  bannerTimer = setInterval(say, 1000);
}

function online() {
  watcher.disconnect();
  clearInterval(bannerTimer);
  banner.hidden = true;
  document.body.classList.remove("offline");
  for (const el of root.querySelectorAll("[data-offline-disabled]")) { el.disabled = false; delete el.dataset.offlineDisabled; }
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
  let mod;
  try {
    mod = await VIEWS[name]();
  } catch {
    replace(root, h("p", { class: "muted" }, "This view loads once the daemon answers again."));
    return;
  }
  if (route().name !== name) return; // the artist moved on meanwhile
  root.replaceChildren();
  root.dataset.view = name;
  unmount = mod.mount(root, ctx, args) || null;
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · plasma studio`;
}

function needsToken(err) {
  replace(root, h("section", { class: "card notice" },
    h("h2", {}, "Sign in to the studio"),
    h("p", {}, "This daemon lets in only the browsers it signed in. Open the studio from a terminal on this computer with ",
      h("code", {}, "sidecar studio"), ": it signs this browser in (a cookie only this daemon's own pages can use) and opens the page.")));
}

// Ends this browser's session on the daemon (the cookie is cleared too); the page then says how to come back.
async function signOut() {
  try { await api("/studio/logout", { method: "POST" }); } catch { /* signed out already */ }
  document.getElementById("signout").hidden = true;
  if (events.ws) { events.ws.onclose = null; events.ws.close(); }
  events.setState("signed out");
  needsToken(new Error("Signed out."));
}

async function start() {
  setTheme(localStorage.getItem("studio.theme") || "dark");
  document.getElementById("theme").addEventListener("click", () =>
    setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  const live = document.getElementById("live");
  events.onstate = (state) => {
    live.textContent = state;
    live.dataset.state = state;
    if (state === "offline") offline(events.offlineSince);
  };
  // Back after an outage: every view draws itself again from the daemon (what it missed meanwhile).
  events.on((ev) => { if (ev.type === "open" && ev.reconnected) { online(); if (ctx.config) show(); } });
  setInterval(() => tickTimes(root), 5000);
  for (;;) {
    try {
      ctx.config = await api("/studio/config");
      break;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return needsToken(err);
      // Not answering yet: the banner says so and the page tries again until it does.
      if (!events.offlineSince) events.offlineSince = new Date();
      offline(events.offlineSince);
      replace(root, h("p", { class: "muted" }, "waiting for the daemon…"));
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  online();
  events.offlineSince = null;
  if (ctx.config.signedIn) {
    const signout = document.getElementById("signout");
    signout.hidden = false;
    signout.addEventListener("click", signOut);
  }
  events.connect();
  window.addEventListener("hashchange", show);
  show();
  // Every view's script, fetched now (a few KB each): a view opened while the daemon is away still draws.
  for (const load of Object.values(VIEWS)) load().catch(() => {});
}

start();
