// LoRAs: the installed LoRAs with their metadata; training runs with step, ETA, device and a loss chart
// that grows live (training.* events); checkpoints (with the sweep's likeness rank and pick), the sweep's
// contact sheet when there is one, promote; a finished run's checkpoints swept from here (the daemon runs
// the sweep, the card follows it) and its pick promoted;
// each checkpoint's samples (thumbnails, a click shows one whole) and, beside the sweep, all of them by
// checkpoint with a Pick each; start a run from a dataset folder (a preset, the quality gate's findings, "Train
// anyway"); cancel and resume.
import { api } from "../api.js";
import { field, h, problem, replace, seconds, toast } from "../dom.js";
import { followTask, stepWords } from "../tasks.js";
import { gateFindings, sampleGrid, sampleStrip } from "./samples.js";

const ACTIVE = new Set(["queued", "running"]);
const RESUMABLE = new Set(["interrupted", "cancelled", "failed"]);
const SVG = "http://www.w3.org/2000/svg";
const KEPT = "studio.train.form"; // the training form as the artist left it

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// Loss per step, smoothed and raw: an SVG line chart with its axis labels.
function lossChart(points) {
  const w = 520, hgt = 160, pad = 30;
  const box = svg("svg", { viewBox: `0 0 ${w} ${hgt}`, class: "chart", role: "img", "aria-label": "loss by step" });
  if (points.length < 2) {
    const t = svg("text", { x: w / 2, y: hgt / 2, "text-anchor": "middle", class: "chart-empty" });
    t.textContent = points.length ? "the loss appears as the run trains" : "no loss yet";
    box.append(t);
    return box;
  }
  const steps = points.map((p) => p.step);
  const values = points.flatMap((p) => [p.last, p.smoothed]).filter((v) => v !== null && v !== undefined);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  const [y0, y1] = [Math.min(...values), Math.max(...values)];
  const x = (s) => pad + ((s - x0) / Math.max(1, x1 - x0)) * (w - pad - 8);
  const y = (v) => 8 + (1 - (v - y0) / Math.max(1e-9, y1 - y0)) * (hgt - pad - 8);
  const line = (key, cls) => svg("polyline", { class: cls, fill: "none",
    points: points.filter((p) => p[key] !== null && p[key] !== undefined).map((p) => `${x(p.step).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ") });
  box.append(svg("line", { x1: pad, y1: hgt - pad + 4, x2: w - 8, y2: hgt - pad + 4, class: "axis" }));
  box.append(line("last", "raw"), line("smoothed", "smooth"));
  for (const [text, ax, ay, anchor] of [[y1.toFixed(3), 2, 14, "start"], [y0.toFixed(3), 2, hgt - pad, "start"],
    [`step ${x0}`, pad, hgt - 6, "start"], [`step ${x1}`, w - 8, hgt - 6, "end"]]) {
    const t = svg("text", { x: ax, y: ay, "text-anchor": anchor, class: "tick" });
    t.textContent = text;
    box.append(t);
  }
  return box;
}

export function mount(root, ctx) {
  const installed = h("div", { class: "card table-wrap" });
  const runsBox = h("div", { class: "runs" });
  // run id -> [{step, last, smoothed}]: the run's curve from the daemon (GET /loras/{id}/loss, kept in the
  // run's loss.csv), then grown live by training.* events.
  const losses = new Map();
  const runs = new Map();
  const cards = new Map();

  const datasetDir = h("input", { name: "datasetDir", required: true, placeholder: "/Users/you/lora/train", autocomplete: "off" });
  const outputName = h("input", { name: "outputName", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,99}", value: ctx.config.triggerWord });
  const steps = h("input", { name: "steps", type: "number", min: 1, max: 100000, value: 1000 });
  const every = h("input", { name: "saveEveryNSteps", type: "number", min: 1, value: 200 });
  const resolution = h("input", { name: "resolution", type: "number", min: 64, max: 4096, step: 64, value: 512 });
  const dim = h("input", { name: "networkDim", type: "number", min: 1, max: 256, value: 32 });
  const alpha = h("input", { name: "networkAlpha", type: "number", min: 0.5, max: 256, step: 0.5, value: 16 });
  const preset = h("select", { name: "preset" }, h("option", { value: "" }, "none"), h("option", { value: "character" }, "character"),
    h("option", { value: "style" }, "style"), h("option", { value: "concept" }, "concept"));
  const force = h("input", { name: "force", type: "checkbox" });
  const gateBox = h("div", { class: "gate-box", "aria-live": "polite" });
  const engine = h("select", { name: "engine" }, h("option", { value: "" }, "default"), h("option", { value: "embedded" }, "embedded"), h("option", { value: "kohya" }, "kohya"));
  const trainForm = h("form", { class: "card form train" },
    h("h2", {}, "Train a LoRA"),
    field("Dataset folder", datasetDir, "a flat folder of images + .txt captions, or kohya's img/ folder"),
    h("div", { class: "cols" }, field("Name", outputName), field("Steps", steps), field("Save every", every), field("Engine", engine)),
    h("div", { class: "cols" }, field("Resolution", resolution, "square, multiple of 64"), field("Network dim", dim), field("Network alpha", alpha),
      field("Preset", preset, "the fields beside it win")),
    h("div", { class: "row" }, h("label", { class: "check" }, force, " Train anyway, past the quality gate's findings"),
      h("button", { type: "submit", class: "primary" }, "Start training")),
    gateBox);
  // The form is kept (this browser) across views and reloads, as Generate's is.
  let kept = {};
  try { kept = JSON.parse(localStorage.getItem(KEPT) || "{}") || {}; } catch { kept = {}; }
  // "Train anyway" is not kept: it is a choice about one set, not a habit.
  const kept_ = () => [...trainForm.querySelectorAll("input[name], select[name]")].filter((el) => el.type !== "checkbox");
  for (const el of kept_()) if (kept[el.name] !== undefined) el.value = kept[el.name];
  const keep = () => {
    const values = Object.fromEntries(kept_().map((el) => [el.name, el.value]));
    try { localStorage.setItem(KEPT, JSON.stringify(values)); } catch { /* private mode: not kept */ }
  };
  trainForm.addEventListener("input", keep);
  trainForm.addEventListener("change", keep);
  trainForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { datasetDir: datasetDir.value.trim(), outputName: outputName.value.trim(), steps: Number(steps.value),
      saveEveryNSteps: Number(every.value), resolution: Number(resolution.value), networkDim: Number(dim.value),
      networkAlpha: Number(alpha.value) };
    if (engine.value) body.engine = engine.value;
    if (preset.value) body.preset = preset.value;
    if (force.checked) body.force = true;
    try {
      upsert(await api("/loras/train", { method: "POST", body }));
      replace(gateBox);
      force.checked = false;
      toast("training queued", "good");
    } catch (err) {
      if (err.code === "dataset_not_ready") replace(gateBox, gateFindings(err));
      toast(err, "error");
    }
  });

  root.append(h("h1", {}, "LoRAs"),
    h("div", { class: "split" }, h("section", {}, h("h2", {}, "Installed"), installed), trainForm),
    h("div", { class: "section-head" }, h("h2", {}, "Training runs")), runsBox);

  async function loadInstalled() {
    try {
      const { loras } = await api("/loras");
      replace(installed, loras.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["LoRA", "trigger", "steps", "dim / alpha", "base", "size"].map((c) => h("th", {}, c)))),
        h("tbody", {}, loras.map((l) => h("tr", { dataset: { lora: l.id } }, h("td", {}, h("strong", {}, l.id)), h("td", {}, l.triggerWord || "–"),
          h("td", {}, l.steps ?? "–"), h("td", {}, l.networkDim ? `${l.networkDim} / ${l.networkAlpha}` : "–"),
          h("td", {}, l.baseModel || "–"), h("td", {}, l.sizeBytes ? `${(l.sizeBytes / 1048576).toFixed(1)} MB` : "–")))))
        : h("p", { class: "muted" }, "No LoRA installed yet."));
    } catch (err) { toast(err, "error"); }
  }

  async function act(run, action, body) {
    try {
      const out = await api(`/loras/${run.id}/${action}`, { method: "POST", ...(body ? { body } : {}) });
      if (action === "promote") { toast(`installed as ${out.loraId}${out.alreadyInstalled ? " (already there)" : ""}`, "good"); loadInstalled(); } else upsert(out);
      return true;
    } catch (err) {
      if (action === "promote" && err.code === "lora_exists") askName(run, body || {});
      else toast(err, "error");
      return false;
    }
  }

  // The default name is taken by another file: a name field under the run, and Promote again.
  function askName(run, body) {
    const card = cards.get(run.id);
    const name = h("input", { name: "promoteName", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,99}",
      value: `${run.outputName}_${body.step ? `s${body.step}` : "final"}` });
    const box = h("form", { class: "card form promote-name", role: "group", "aria-label": "promote under another name" },
      h("p", {}, `A different LoRA is already installed as “${run.outputName}”. Install this one under another name:`),
      h("div", { class: "row" }, field("Name", name), h("button", { type: "submit", class: "primary" }, "Promote"),
        h("button", { type: "button", class: "ghost", onclick: () => box.remove() }, "Cancel")));
    box.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!name.checkValidity()) { name.reportValidity(); return; }
      if (await act(run, "promote", { ...body, name: name.value.trim() })) box.remove();
    });
    card.querySelector(".promote-name")?.remove();
    card.append(box);
    name.focus();
    name.select();
  }

  function upsert(run) {
    runs.set(run.id, run);
    const series = losses.get(run.id) || [];
    if (run.loss && run.loss.last !== null && (!series.length || series.at(-1).step < run.step)) series.push({ step: run.step, ...run.loss });
    losses.set(run.id, series);
    let card = cards.get(run.id);
    if (!card) {
      card = h("article", { class: "run card", dataset: { runId: run.id } });
      cards.set(run.id, card);
      runsBox.prepend(card);
      loadSweep(run, card);
      loadLoss(run, card);
    }
    renderRun(card, run);
  }

  async function loadLoss(run, card) {
    try {
      const { points } = await api(`/loras/${run.id}/loss?points=400`);
      const kept = points.map((p) => ({ step: p.step, last: p.loss, smoothed: p.smoothed }));
      const last = kept.length ? kept.at(-1).step : -1;
      losses.set(run.id, [...kept, ...(losses.get(run.id) || []).filter((p) => p.step > last)]);
      renderRun(card, runs.get(run.id));
    } catch { /* an old run gone from the store: the live points stay */ }
  }

  async function loadSweep(run, card) {
    try {
      const sweep = await api(`/loras/${run.id}/sweep`);
      card.sweep = sweep;
      // A sweep still running (started before this page was opened): the card follows it.
      if (sweep.task && sweep.task.status === "running" && !card.following) followSweep(run, card, sweep.task);
      renderRun(card, runs.get(run.id));
    } catch { /* an old run gone from the store: nothing to show */ }
  }

  // The sweep form of a finished run: kept on its card across redraws (what she typed stays).
  function sweepPanel(run, card) {
    if (card.sweepPanel) return card.sweepPanel;
    const prompts = h("textarea", { name: "sweepPrompts", rows: 2, required: true },
      `${ctx.config.triggerWord}, portrait, looking at viewer`);
    const seeds = h("input", { name: "sweepSeeds", required: true, value: "1, 2, 3", pattern: "\\s*\\d+(\\s*,\\s*\\d+)*\\s*", autocomplete: "off" });
    const state = h("div", { class: "sweep-state", role: "status", "aria-live": "polite" });
    const start = h("button", { type: "submit", class: "primary" }, "Sweep checkpoints");
    const form = h("form", { class: "form sweep-form", "aria-label": "sweep the checkpoints" },
      h("h3", {}, "Compare the checkpoints"),
      h("p", { class: "muted small" }, "Every checkpoint draws the same prompts and seeds side by side; with reference images of the character, the one most like it is picked."),
      field("Prompts", prompts, "one a line"),
      h("div", { class: "row" }, field("Seeds", seeds, "whole numbers, separated by commas"), start),
      state);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (!form.checkValidity()) { form.reportValidity(); return; }
      const body = { prompts: prompts.value.split("\n").map((p) => p.trim()).filter(Boolean),
        seeds: seeds.value.split(",").map((x) => Number(x.trim())) };
      start.disabled = true;
      try {
        followSweep(run, card, await api(`/loras/${run.id}/sweep`, { method: "POST", body }));
      } catch (err) { start.disabled = false; toast(err, "error"); }
    });
    card.sweepPanel = { form, state, start };
    return card.sweepPanel;
  }

  // The sweep as the daemon runs it: its state under the form, then the ranking and the contact sheet.
  function followSweep(run, card, task) {
    const panel = sweepPanel(run, card);
    card.following = true;
    panel.start.disabled = true;
    const began = Date.now();
    followTask(task.id, (t) => {
      panel.state.dataset.status = t.status;
      if (t.status === "running") {
        replace(panel.state, h("p", { class: "small" }, h("span", { class: "badge running" }, "sweeping"), " ",
          `${stepWords(t)} (${seconds((Date.now() - began) / 1000)})`));
        return;
      }
      card.following = false;
      panel.start.disabled = false;
      if (t.status === "succeeded") {
        replace(panel.state, h("p", { class: "small" }, h("span", { class: "badge succeeded" }, "swept"), " The contact sheet and the ranking are below."));
        card.sweepOpen = true;
        loadSweep(run, card);
      } else {
        replace(panel.state, h("p", { class: "error problem" }, t.status === "cancelled" ? "The sweep was cancelled."
          : "The sweep stopped before it ended. Its log says why; the checkpoints are unchanged."),
          t.output.length ? h("details", { class: "log" }, h("summary", {}, "Log"), h("pre", {}, t.output.join("\n"))) : null);
      }
    }, (err) => { card.following = false; panel.start.disabled = false; replace(panel.state, problem(err)); });
  }

  function renderRun(card, run) {
    const pct = run.total ? Math.round((100 * run.step) / run.total) : 0;
    card.dataset.status = run.status;
    const sweep = card.sweep;
    // The sweep's likeness ranking (index.json: ranking, pick), when the daemon could judge it.
    const ranking = (sweep && sweep.index && sweep.index.ranking) || [];
    const ranks = new Map(ranking.map((r) => [r.step, r]));
    const pick = sweep && sweep.index && sweep.index.pick;
    replace(card,
      h("div", { class: "row run-head" },
        h("strong", {}, run.outputName), h("span", { class: `badge ${run.status}` }, run.status),
        h("span", { class: "muted small" }, `${run.engine} on ${run.device || "?"}`),
        ACTIVE.has(run.status) ? h("button", { type: "button", class: "small danger", onclick: () => act(run, "cancel") }, "Cancel") : null,
        RESUMABLE.has(run.status) ? h("button", { type: "button", class: "small", onclick: () => act(run, "resume") }, "Resume") : null),
      h("div", { class: "progress", role: "progressbar", "aria-label": "training progress", "aria-valuemin": 0, "aria-valuemax": run.total || 1,
        "aria-valuenow": run.step }, h("div", { class: "track" }, h("div", { class: "bar" })), h("span", { class: "small step" }, `${run.step}/${run.total}`)),
      h("p", { class: "muted small" }, [
        run.etaSeconds !== null && ACTIVE.has(run.status) ? h("span", { class: "eta" }, `ETA ${seconds(run.etaSeconds)}`) : null,
        run.secondsPerStep ? `${run.secondsPerStep.toFixed(2)} s/step` : null,
        run.loss && run.loss.smoothed !== null ? `loss ${run.loss.smoothed.toFixed(4)}` : null,
        run.datasetDir].filter(Boolean).flatMap((x, i) => (i ? [" · ", x] : [x]))),
      run.warnings.length ? h("ul", { class: "warnings small" }, run.warnings.map((w) => h("li", {}, w))) : null,
      run.error ? problem(run.error) : null,
      lossChart(losses.get(run.id) || []),
      promotable(run).length ? h("div", { class: "checkpoints" }, h("h3", {}, "Checkpoints"),
        pick ? h("p", { class: "small pick" }, `Most like the character (sweep): ${pick.label}, mean likeness ${pick.meanScore.toFixed(2)}, ${Math.round(100 * pick.shareSame)}% same`)
          : sweep && sweep.index && sweep.index.unranked ? h("p", { class: "muted small" }, `Sweep not ranked: ${sweep.index.unranked}`) : null,
        h("ul", {}, promotable(run).map((c) => h("li", { class: `row${c.final ? " final" : ""}${(c.samples || []).length ? " has-samples" : ""}`, dataset: c.final ? { step: c.step, final: "1" } : { step: c.step } },
          h("span", {}, c.final ? `final LoRA (step ${c.step})` : `step ${c.step}`), h("span", { class: "muted small" }, c.fileName),
          ranks.has(c.step) && !c.final ? h("span", { class: `badge rank${pick && pick.step === c.step ? " succeeded" : ""}`,
            title: `mean likeness ${ranks.get(c.step).meanScore}, ${Math.round(100 * ranks.get(c.step).shareSame)}% same, ${ranks.get(c.step).failures} failed` },
          `#${ranks.get(c.step).rank} ${ranks.get(c.step).meanScore.toFixed(2)}`) : null,
          h("button", { type: "button", class: c.final ? "small primary" : "small", onclick: () => act(run, "promote", c.final ? {} : { step: c.step }) }, "Promote"),
          sampleStrip(run, c))))) : null,
      pick && !ACTIVE.has(run.status) ? h("div", { class: "row pick-promote" }, h("button", { type: "button", class: "primary",
        onclick: () => act(run, "promote", pick.step === null || pick.step === undefined ? {} : { step: pick.step }) }, `Promote the pick (${pick.label})`)) : null,
      !ACTIVE.has(run.status) && run.checkpoints.length ? sweepPanel(run, card).form : null,
      h("div", { class: "sweep-compare" },
        sweep && sweep.contactSheetUrl ? h("details", { class: "sweep", open: card.sweepOpen || false }, h("summary", {}, "Sweep contact sheet"),
          h("a", { href: sweep.contactSheetUrl, target: "_blank", rel: "noopener" }, h("img", { src: sweep.contactSheetUrl, alt: "contact sheet", class: "sheet" }))) : null,
        ACTIVE.has(run.status) ? null : sampleGrid(run, run.checkpoints, (c) => act(run, "promote", { step: c.step }), pick && pick.step)),
      run.logTail.length ? h("details", { class: "log" }, h("summary", {}, "Log"), h("pre", {}, run.logTail.join("\n"))) : null);
    card.querySelector(".bar").style.width = `${pct}%`;
  }

  // The run's checkpoints and, once it succeeded, its final LoRA file (promoted without a step), also when
  // a checkpoint was saved at the same last step (the daemon then lists only that one).
  function promotable(run) {
    const list = run.checkpoints.slice();
    if (run.status === "succeeded" && run.finalFile && !list.some((c) => c.final)) {
      list.push({ step: run.step, fileName: run.finalFile.split(/[\\/]/).at(-1), final: true });
    }
    return list;
  }

  async function loadRuns() {
    try {
      const { runs: list } = await api("/loras/runs?limit=20");
      for (const run of list.slice().reverse()) upsert(run);
      if (!list.length && !runsBox.children.length) runsBox.append(h("p", { class: "muted empty-runs" }, "No training run yet."));
    } catch (err) { toast(err, "error"); }
  }

  const off = ctx.events.on((ev) => {
    if (ev.type === "open") loadRuns();
    else if (ev.type && ev.type.startsWith("training.") && ev.run) {
      runsBox.querySelector(".empty-runs")?.remove();
      upsert(ev.run);
      if (ev.type === "training.succeeded") loadInstalled();
    }
  });
  loadInstalled();
  loadRuns();
  return off;
}
