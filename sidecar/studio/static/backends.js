// The generation backends (the laptop and the remote ComfyUI servers of the [[backends]] tables): a
// table of each one's state, device, queue and speed for the Now view, and the choices of `where` for the
// Generate form. /health lists them; `backend.up` / `backend.down` events say at once when one joins or
// leaves routing (the row changes then, and /health is asked again for the queue and the others).
// A rented backend (a ComfyUI on vast.ai) shows its cost so far and a Stop button that releases it
// (destroyed); rentals not in routing (starting, or ended with their final cost) are listed below the table.
import { h, replace } from "./dom.js";

const LIVE_RENTAL = new Set(["searching", "creating", "starting", "serving"]);

function money(v) {
  return `$${Number(v).toFixed(v >= 1 ? 2 : 4)}`;
}

function stopButton(name) {
  return h("button", { class: "ghost danger", type: "button", dataset: { action: "release", backend: name },
    title: "destroy the rented machine now (a job it runs is re-queued once elsewhere)" }, "Stop");
}

function costCell(b) {
  const r = b.rental;
  if (!r) return h("td", { class: "cost num" }, "–");
  const limit = r.maxTotalCost ? ` of ${money(r.maxTotalCost)}` : "";
  return h("td", { class: "cost num", title: `${r.offer || r.gpu || ""} at ${money(r.pricePerHour)}/h; destroyed after ${r.idleMinutes} idle min` },
    money(r.cost), h("small", { class: "muted" }, limit), " ", stopButton(b.name));
}

const SPECIAL = [["local", "this machine"], ["any", "every backend"]];

function speed(b) {
  return b.secondsPerStep === null || b.secondsPerStep === undefined ? "–" : `${b.secondsPerStep.toFixed(2)} s`;
}

function stateCell(b) {
  return h("td", { class: "state" },
    h("span", { class: `pill state-${b.state}` }, b.state),
    b.reason ? h("small", { class: "reason muted" }, b.reason) : null);
}

function row(b) {
  return h("tr", { dataset: { backend: b.name, state: b.state } },
    h("th", { scope: "row" }, b.name, b.local ? h("small", { class: "muted" }, " this machine") : null),
    h("td", {}, b.kind),
    stateCell(b),
    h("td", { class: "device" }, b.device || "–"),
    h("td", {}, b.profile),
    h("td", {}, b.tags.length ? b.tags.join(", ") : "–"),
    h("td", { class: "running" }, b.running ? b.running.slice(0, 8) : "idle"),
    h("td", { class: "queue num" }, b.queue === undefined ? "…" : String(b.queue)),
    h("td", { class: "speed num" }, speed(b)),
    h("td", { class: "loaded" }, b.loadedCheckpoint || "–"),
    costCell(b));
}

export function renderBackends(box, backends) {
  replace(box, h("div", { class: "table-wrap card" }, h("table", { class: "backends" },
    h("thead", {}, h("tr", {}, ["Backend", "Kind", "State", "Device", "Profile", "Tags", "Running", "Queue",
      "s/step", "Checkpoint", "Cost"].map((t) => h("th", { scope: "col", class: ["Queue", "s/step", "Cost"].includes(t) ? "num" : null }, t)))),
    h("tbody", {}, backends.map(row)))));
}

// Rentals that are not rows of the table (GET /backends): being rented, or ended (their final cost and why).
export function renderRentals(box, rentals, inPool) {
  const shown = rentals.filter((r) => !(r.state === "serving" && inPool.has(r.name))).slice(-5);
  replace(box, shown.length ? h("ul", { class: "rentals" }, shown.map((r) =>
    h("li", { dataset: { rental: r.name, state: r.state } },
      h("strong", {}, r.name), " ", h("span", { class: `pill state-${LIVE_RENTAL.has(r.state) ? "unknown" : "down"}` }, r.state),
      ` ${r.gpu || ""} ${money(r.cost)} `, r.message ? h("small", { class: "muted reason" }, r.message) : null,
      LIVE_RENTAL.has(r.state) ? stopButton(r.name) : null))) : null);
}

// A backend.up / backend.down event: that row changes now (its queue is kept until /health answers).
export function applyBackendEvent(box, ev) {
  const old = box.querySelector(`tr[data-backend="${CSS.escape(ev.backend.name)}"]`);
  if (!old) return;
  const queue = old.querySelector(".queue")?.textContent;
  old.replaceWith(row({ ...ev.backend, queue: queue === "…" ? undefined : Number(queue) }));
}

// `where` choices: the default, local, any, each tag, each backend (with its state).
export function whereChoices(backends, defaultWhere) {
  const tags = [...new Set(backends.flatMap((b) => b.tags))].sort();
  return [
    ["", `default (${defaultWhere})`],
    ...SPECIAL.map(([v, label]) => [v, `${v}: ${label}`]),
    ...tags.map((t) => [t, `${t}: ${backends.filter((b) => b.tags.includes(t)).map((b) => b.name).join(", ")}`]),
    ...backends.map((b) => [b.name, `${b.name} (${b.state}, ${b.profile})`]),
  ];
}

// The backends a `where` allows, as the daemon's router resolves it.
export function allowedBy(where, backends) {
  if (where === "any") return backends;
  if (where === "local") return backends.filter((b) => b.local);
  const named = backends.filter((b) => b.name === where);
  return named.length ? named : backends.filter((b) => b.tags.includes(where));
}
