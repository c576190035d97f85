// Now: the daemon at a glance (engine, device, ComfyUI, training, warnings), its generation backends
// (state, device, queue, s/step), and the queue with live progress, cancel and the failed jobs' errors;
// pause and resume the queue. Everything moves with /events; /health is asked again when an event says
// something changed.
import { api } from "../api.js";
import { applyBackendEvent, renderBackends, renderRentals } from "../backends.js";
import { h, replace, seconds, toast } from "../dom.js";
import { jobList } from "../jobs.js";

function tile(label, value, state = "") {
  return h("div", { class: `tile ${state}` }, h("span", { class: "label" }, label), h("strong", {}, value));
}

function queueText(queue, depth, running) {
  const counts = `${depth} waiting${running ? ", 1 running" : ""}`;
  return queue && queue.paused ? `paused · ${counts}` : counts;
}

function renderHealth(box, health) {
  const t = health.training;
  const loaded = health.loaded;
  replace(box,
    h("div", { class: "tiles" },
      tile("Daemon", health.status, health.status === "ok" ? "good" : "bad"),
      tile("Engine", `${health.engine}${health.engineAvailable ? "" : " (down)"}`, health.engineAvailable ? "good" : "bad"),
      tile("Device", health.device || "–", health.device === "cpu" ? "warn" : "good"),
      tile("MPS", health.mps ? "yes" : "no"),
      tile("ComfyUI", health.engine === "comfyui" ? (health.comfyui ? "up" : "down") : "not used",
        health.engine === "comfyui" ? (health.comfyui ? "good" : "bad") : ""),
      tile("Queue", queueText(health.queue, health.queueDepth, health.runningJob), health.queue && health.queue.paused ? "warn" : ""),
      tile("Training", t ? `${t.status} ${t.step ?? 0}/${t.total ?? "?"}${t.etaSeconds ? `, ${seconds(t.etaSeconds)} left` : ""}` : "idle",
        t ? "warn" : ""),
      tile("Loaded", loaded ? (loaded.checkpoint || "nothing") : "–"),
      tile("Profile", health.profile)),
    health.warnings.length
      ? h("ul", { class: "warnings" }, health.warnings.map((w) => h("li", {}, w)))
      : null);
}

export function mount(root, ctx) {
  const healthBox = h("section", { class: "health", "aria-label": "daemon health" }, h("p", { class: "muted" }, "…"));
  const list = h("div", { class: "jobs grid" });
  const backendsBox = h("section", { class: "backends-box", "aria-label": "generation backends" });
  const rentalsBox = h("section", { class: "rentals-box", "aria-label": "rented backends" });
  // Stop on a rented backend: it leaves routing and is destroyed (the daemon owns it; this only asks).
  const release = async (ev) => {
    const button = ev.target.closest("button[data-action=release]");
    if (!button) return;
    button.disabled = true;
    try {
      const r = await api(`/backends/${encodeURIComponent(button.dataset.backend)}/release`, { method: "POST" });
      toast(`${r.name} released: ${r.state}, cost $${r.cost.toFixed(4)}`);
    } catch (err) { toast(err, "error"); button.disabled = false; }
    refresh();
  };
  backendsBox.addEventListener("click", release);
  rentalsBox.addEventListener("click", release);
  // Pause: a running job finishes, nothing new starts (kept across a restart); the button says which.
  const pauseButton = h("button", { class: "ghost", type: "button", dataset: { action: "pause" } }, "Pause queue");
  let paused = false;
  const showPaused = (queue) => {
    paused = Boolean(queue && queue.paused);
    pauseButton.textContent = paused ? "Resume queue" : "Pause queue";
    pauseButton.dataset.action = paused ? "resume" : "pause";
    pauseButton.title = paused ? `paused since ${new Date(queue.pausedAt).toLocaleTimeString()}: nothing new starts`
      : "the running job finishes, nothing new starts";
  };
  pauseButton.addEventListener("click", async () => {
    try { showPaused(await api(paused ? "/queue/resume" : "/queue/pause", { method: "POST" })); }
    catch (err) { toast(err, "error"); }
  });
  root.append(
    h("h1", {}, "Now"),
    healthBox,
    h("h2", {}, "Backends"),
    backendsBox,
    rentalsBox,
    h("div", { class: "section-head" }, h("h2", {}, "Queue and recent jobs"),
      h("div", { class: "row" }, pauseButton, h("a", { class: "button", href: "#/generate" }, "New image"))),
    list);

  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try {
        const health = await api("/health");
        renderHealth(healthBox, health);
        renderBackends(backendsBox, health.backends);
        showPaused(health.queue);
        const listed = await api("/backends");
        renderRentals(rentalsBox, listed.rentals, new Set(health.backends.map((b) => b.name)));
      } catch (err) { toast(err, "error"); }
    }, 150);
  };
  refresh();
  const jobs = jobList(list, ctx.events);
  const off = ctx.events.on((ev) => {
    if (ev.type === "backend.up" || ev.type === "backend.down") {
      applyBackendEvent(backendsBox, ev);
      if (ev.type === "backend.down") toast(`${ev.backend.name} is out of routing: ${ev.backend.reason || "no answer"}`, "error");
    }
    if (ev.type === "queue.paused" || ev.type === "queue.resumed") showPaused(ev.queue);
    if (ev.type === "open" || /^(job\.(queued|started|succeeded|failed|cancelled)|training\.|backend\.|queue\.)/.test(ev.type)) refresh();
  });
  return () => { jobs.off(); off(); clearTimeout(pending); };
}
