// Generate: a form over POST /jobs with the profile's limits shown and checked before submit, a seed
// dice, a pose image picked from disk (previewed here, stored by the daemon), where it runs (a backend,
// a tag, local or any). The checkpoint comes from GET /models with its family (read from the file) and
// the backends that can run it (asked again when a backend comes up or goes, and when the list is opened);
// the LoRA stack (views/stack.js) offers only LoRAs of that family, up to
// the profile's max_loras; the sizes are those the family allows on the profiles of the backends that
// would run it (its buckets as a list, any multiple of 8 within them by hand), and change with the
// checkpoint. The form is kept (this browser's localStorage) across views and reloads; Ctrl/Cmd+Enter
// submits. Its results are a gallery of the jobs the studio submitted (kept by the daemon: GET
// /jobs?source=studio, so a reload or another browser shows them), each with its live previews while it
// runs, and on each: retry, variations, more like this (img2img from it, with a denoise slider), upscale
// for print, save to a page, the workflow.
import { api } from "../api.js";
import { allowedBy, whereChoices } from "../backends.js";
import { field, h, problem, replace, toast } from "../dom.js";
import { jobList } from "../jobs.js";
import { resultActions } from "./results.js";
import { allModels, checkpointOptions, withTriggers } from "./checkpoint.js";
import { familyName, loraStack } from "./stack.js";

const SEED_MAX = 2 ** 32 - 1;
const KEPT = "studio.generate.form"; // the form's values, as the artist left them
const SOURCE = "studio"; // the jobs this view submits, and lists
const REOPEN_MS = 1000; // opening the checkpoint list asks GET /models again at most this often

// A die (drawn, not an emoji: not every system has an emoji font).
function dieIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const icon = document.createElementNS(ns, "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("class", "icon");
  const face = document.createElementNS(ns, "rect");
  for (const [k, v] of Object.entries({ x: 3, y: 3, width: 18, height: 18, rx: 4, fill: "none", stroke: "currentColor", "stroke-width": 2 })) face.setAttribute(k, v);
  icon.append(face);
  for (const [cx, cy] of [[8, 8], [16, 8], [12, 12], [8, 16], [16, 16]]) {
    const dot = document.createElementNS(ns, "circle");
    for (const [k, v] of Object.entries({ cx, cy, r: 1.6, fill: "currentColor" })) dot.setAttribute(k, v);
    icon.append(dot);
  }
  return icon;
}

function number(name, value, { min, max, step = 1 } = {}) {
  return h("input", { type: "number", name, value, min, max, step, required: true, inputmode: "decimal" });
}

function select(name, options, value) {
  return h("select", { name }, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
}

// A profile's limits for one family (`profile.families`); an unknown family (a checkpoint whose header this
// machine cannot read) is held to the profile's own sides, as the daemon holds it.
function familyLimits(p, family) {
  const f = family && p.families && p.families[family];
  if (f) return f;
  const base = Object.values(p.families || {})[0];
  return { maxWidth: p.maxWidth, maxHeight: p.maxHeight, maxPixels: null,
    defaultWidth: base ? base.defaultWidth : p.maxWidth, defaultHeight: base ? base.defaultHeight : p.maxHeight,
    sizes: base ? base.sizes.filter(([w, hh]) => w <= p.maxWidth && hh <= p.maxHeight) : [] };
}

const area = (f) => Math.min(f.maxWidth * f.maxHeight, f.maxPixels || Infinity);

export function mount(root, ctx, args) {
  const cfg = ctx.config;
  const d = cfg.defaults;
  const lim = cfg.limits;
  let prof = cfg.profile; // the widest profile among the backends `where` allows (the laptop's until /health answers)
  // "Edit and run again" on a job card leaves that job's parameters here for one visit; otherwise the
  // form is as the artist left it (another view, a reload).
  const once = sessionStorage.getItem("studio.prefill");
  sessionStorage.removeItem("studio.prefill");
  let prefill = {};
  try { prefill = JSON.parse(once || localStorage.getItem(KEPT) || "{}") || {}; } catch { prefill = {}; }

  const prompt = h("textarea", { name: "prompt", rows: 4, required: true, maxlength: 4000,
    placeholder: `${cfg.triggerWord}, full body, standing on a rooftop at dusk` }, prefill.prompt || "");
  const negative = h("textarea", { name: "negativePrompt", rows: 2, maxlength: 4000 }, prefill.negativePrompt ?? d.negativePrompt);
  // The checkpoint: the kept one until GET /models lists them all with their family.
  const keptCheckpoint = prefill.checkpoint || d.checkpoint;
  const checkpoint = h("select", { name: "checkpoint" }, h("option", { value: keptCheckpoint }, keptCheckpoint));
  const familyPill = h("span", { class: "pill family", dataset: { family: "" } }, "family …");
  const runsOn = h("span", { class: "muted small runs-on" });
  let models = null; // GET /models: {checkpoints, loras, diffusionModels}
  let modelsSettled = false; // it answered (or failed: the family stays unknown)
  const chosenModel = () => models && [...models.checkpoints, ...models.diffusionModels].find((m) => m.name === checkpoint.value);
  const stack = loraStack({ limits: lim.loraStrength, defaultStrength: d.loraStrength, onChange: () => { check(); keep(); } });
  // The stack as it was left, or as a job had it (`loras`, or the one-LoRA form `loraId` of older jobs).
  stack.set(Array.isArray(prefill.loras) ? prefill.loras.map((l) => ({ id: l.id, strength: l.strength }))
    : prefill.loraId ? [{ id: prefill.loraId, strength: prefill.loraStrength ?? d.loraStrength }] : []);
  const seed = number("seed", prefill.seed ?? Math.floor(Math.random() * SEED_MAX), { min: 0, max: SEED_MAX });
  const dice = h("button", { type: "button", class: "ghost", title: "a random seed", "aria-label": "random seed",
    onclick: () => { seed.value = Math.floor(Math.random() * SEED_MAX); check(); } }, dieIcon());
  const steps = number("steps", prefill.steps ?? d.steps, { min: lim.steps.min, max: lim.steps.max });
  const cfgScale = number("cfg", prefill.cfg ?? d.cfg, { min: lim.cfg.min, max: lim.cfg.max, step: 0.5 });
  const sampler = select("sampler", Object.keys(cfg.samplers).map((s) => [s, s]), prefill.sampler || d.sampler);
  const scheduler = h("select", { name: "scheduler" });
  const fillSchedulers = () => {
    const current = scheduler.value || prefill.scheduler || d.scheduler;
    replace(scheduler, (cfg.samplers[sampler.value] || []).map((s) => h("option", { value: s, selected: s === current }, s)));
  };
  sampler.addEventListener("change", fillSchedulers);
  fillSchedulers();
  let sized = familyLimits(prof, null); // the sizes the chosen family may render where the job would run
  const width = number("width", prefill.width ?? sized.defaultWidth, { min: 64, max: sized.maxWidth, step: prof.multipleOf });
  const height = number("height", prefill.height ?? sized.defaultHeight, { min: 64, max: sized.maxHeight, step: prof.multipleOf });
  const size = h("select", { class: "sizes" });
  const widthHint = h("span", {});
  const heightHint = h("span", {});
  const profHint = h("span", { class: "muted small" });
  const where = h("select", { name: "where" }, h("option", { value: "" }, `default (${cfg.defaultWhere})`));
  let backends = [];
  let runners = null; // the backends (where allows) that run the checkpoint; null: not known yet
  let family = null;
  const fits = (w, hh) => w <= sized.maxWidth && hh <= sized.maxHeight && (!sized.maxPixels || w * hh <= sized.maxPixels);
  // The sizes and LoRA count for the checkpoint's family on the backends that would run it; a family change
  // (another checkpoint picked) starts from that family's default size.
  const setLimits = ({ familyChanged = false } = {}) => {
    const model = chosenModel();
    family = model && model.family !== "unknown" ? model.family : null;
    const allowed = allowedBy(where.value || cfg.defaultWhere, backends);
    const able = model && backends.length ? backends.filter((b) => model.backends.includes(b.name)) : null;
    runners = able ? allowed.filter((b) => able.includes(b)) : null;
    // The sizes of the backends that would run it; where `where` leaves them all out (check() says so), those
    // of the ones that could, so the family's sizes show all the same.
    const chosen = runners && runners.length ? runners : able && able.length ? able : allowed;
    const profiles = [...new Set(chosen.map((b) => b.profile))].map((n) => cfg.profiles[n])
      .filter((p) => p && (!family || p.families[family]));
    const options = profiles.length ? profiles : [cfg.profile];
    prof = options.reduce((a, b) => (area(familyLimits(b, family)) > area(familyLimits(a, family)) ? b : a));
    sized = familyLimits(prof, family);
    stack.setFamily(family);
    stack.setMost(Math.max(...options.map((p) => p.maxLoras)));
    familyPill.dataset.family = model ? model.family : "";
    familyPill.textContent = model ? familyName(model.family) : "family …";
    familyPill.title = (model && model.familyNote) || "";
    runsOn.textContent = !model ? "" : model.backends.length ? `runs on ${model.backends.join(", ")}`
      : `no backend here runs ${familyName(model.family)} models`;
    width.max = sized.maxWidth; height.max = sized.maxHeight;
    // Until GET /models has answered the family is not known: a kept size waits for it (an SDXL size is not
    // cut to the laptop's SD 1.5 sides while the list loads).
    if (familyChanged || (modelsSettled && !fits(Number(width.value), Number(height.value)))) {
      width.value = sized.defaultWidth; height.value = sized.defaultHeight;
    }
    replace(size, sized.sizes.map(([w, hh]) => h("option", { value: `${w}x${hh}` },
      `${w}×${hh}${w < hh ? " portrait" : w > hh ? " landscape" : " square"}`)), h("option", { value: "" }, "other (width, height)"));
    syncSize();
    widthHint.textContent = `≤ ${sized.maxWidth}, multiple of ${prof.multipleOf}`;
    heightHint.textContent = `≤ ${sized.maxHeight}` + (sized.maxPixels ? `, ≤ ${sized.maxPixels.toLocaleString("en")} pixels` : "") + ` (${prof.name})`;
    profHint.textContent = prof.description;
  };
  const syncSize = () => {
    const value = `${width.value}x${height.value}`;
    size.value = [...size.options].some((o) => o.value === value) ? value : "";
  };
  size.addEventListener("change", () => {
    if (!size.value) { width.focus(); return; }
    [width.value, height.value] = size.value.split("x");
    check(); keep();
  });
  width.addEventListener("input", syncSize);
  height.addEventListener("input", syncSize);
  setLimits();
  const poseFile = h("input", { type: "file", name: "pose", accept: "image/png,image/jpeg,image/webp" });
  const posePreview = h("div", { class: "pic pose empty", ratio: "2 / 3" });
  const poseClear = h("button", { type: "button", class: "small ghost", hidden: true }, "Remove pose");
  const cnStrength = number("controlnetStrength", prefill.controlnetStrength ?? d.controlnetStrength,
    { min: lim.controlnetStrength.min, max: lim.controlnetStrength.max, step: 0.05 });
  cnStrength.disabled = true;
  let posePath = prefill.poseImagePath || null;
  if (posePath) { // from "Edit & rerun": the file is on the daemon's disk already
    posePreview.append(h("span", { class: "pose-name small" }, posePath.split("/").at(-1)));
    poseClear.hidden = false;
    cnStrength.disabled = false;
  }

  poseFile.addEventListener("change", async () => {
    const file = poseFile.files[0];
    if (!file) return;
    const dataUrl = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
    try {
      const stored = await api("/studio/poses", { method: "POST",
        body: { fileName: file.name, dataBase64: String(dataUrl).split(",", 2)[1] } });
      posePath = stored.path;
      posePreview.style.aspectRatio = `${stored.width} / ${stored.height}`;
      replace(posePreview, h("img", { src: dataUrl, alt: "pose image" }));
      posePreview.classList.remove("empty");
      poseClear.hidden = false;
      cnStrength.disabled = false;
      keep();
    } catch (err) {
      poseFile.value = "";
      toast(err, "error");
    }
  });
  poseClear.addEventListener("click", () => {
    posePath = null; poseFile.value = ""; poseClear.hidden = true; cnStrength.disabled = true;
    posePreview.replaceChildren(); posePreview.classList.add("empty");
    keep();
  });

  const problems = h("ul", { class: "problems", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", title: "Ctrl+Enter (⌘+Enter)" }, "Generate");
  const gallery = h("div", { class: "result gallery" });

  function check() {
    const out = [];
    for (const input of form.querySelectorAll("input[type=number]:not(:disabled)")) {
      if (!input.checkValidity()) out.push(`${input.name}: ${input.validationMessage}`);
    }
    const w = Number(width.value), hh = Number(height.value);
    const what = family ? `${familyName(family)} on the ${prof.name} profile` : `the ${prof.name} profile`;
    if (w > sized.maxWidth || hh > sized.maxHeight) out.push(`${w}×${hh} is over ${what}'s ${sized.maxWidth}×${sized.maxHeight}`);
    else if (sized.maxPixels && w * hh > sized.maxPixels) out.push(`${w}×${hh} is more pixels than ${what} allows (${sized.maxPixels}): pick one of its sizes`);
    const model = chosenModel();
    if (model && backends.length && !model.backends.length) out.push(`no backend here runs ${checkpoint.value} (${familyName(model.family)})`);
    else if (runners && !runners.length) out.push(`${checkpoint.value} runs on ${model.backends.join(", ")}, which “where” leaves out`);
    out.push(...stack.problems());
    if (w % prof.multipleOf || hh % prof.multipleOf) out.push(`width and height must be multiples of ${prof.multipleOf}`);
    if (!prompt.value.trim()) out.push("a prompt is needed");
    replace(problems, out.map((p) => h("li", {}, p)));
    submit.disabled = out.length > 0;
    return out.length === 0;
  }

  const form = h("form", { class: "card form generate", novalidate: true },
    field("Prompt", prompt),
    field("Negative prompt", negative),
    field("Checkpoint", checkpoint, h("span", { class: "family-line" }, familyPill, " ", runsOn)),
    stack.element,
    h("div", { class: "cols" },
      field("Seed", h("div", { class: "inline" }, seed, dice)),
      field("Steps", steps, `${lim.steps.min}–${lim.steps.max}`),
      field("CFG", cfgScale, `${lim.cfg.min}–${lim.cfg.max}`)),
    h("div", { class: "cols" }, field("Sampler", sampler), field("Scheduler", scheduler)),
    h("div", { class: "cols" },
      field("Size", size, "the family's sizes"),
      field("Width", width, widthHint),
      field("Height", height, heightHint),
      field("Where", where, "which backends may run it")),
    h("div", { class: "cols pose-row" },
      field("Pose image (ControlNet)", h("div", {}, poseFile, poseClear)),
      field("ControlNet strength", cnStrength, `${lim.controlnetStrength.min}–${lim.controlnetStrength.max}`),
      posePreview),
    problems,
    h("div", { class: "row" }, submit, h("span", { class: "muted small" }, "Ctrl+Enter"), profHint));

  // What is kept: the values as the wire names them, and the pose the daemon stored.
  function keep() {
    const values = { poseImagePath: posePath, loras: stack.value() };
    for (const el of form.querySelectorAll("input[name], textarea[name], select[name]")) {
      if (el.type === "file" || el.name.startsWith("loras[")) continue;
      // A list the daemon has not filled yet (LoRAs, where) keeps the value it was given.
      if (el.tagName === "SELECT" && prefill[el.name] && ![...el.options].some((o) => o.value === prefill[el.name])) {
        values[el.name] = prefill[el.name];
        continue;
      }
      values[el.name] = el.type === "number" ? (el.value === "" ? null : Number(el.value)) : el.value;
    }
    try { localStorage.setItem(KEPT, JSON.stringify(values)); } catch { /* private mode: not kept */ }
  }

  form.addEventListener("input", () => { check(); keep(); });
  form.addEventListener("change", keep);
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  });
  where.addEventListener("change", () => { setLimits(); check(); });
  checkpoint.addEventListener("change", () => { setLimits({ familyChanged: true }); check(); keep(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!check()) return;
    const body = {
      prompt: prompt.value.trim(), negativePrompt: negative.value, seed: Number(seed.value),
      steps: Number(steps.value), cfg: Number(cfgScale.value), sampler: sampler.value, scheduler: scheduler.value,
      resolution: { width: Number(width.value), height: Number(height.value) },
    };
    if (checkpoint.value) body.checkpoint = checkpoint.value;
    const loras = stack.value();
    if (loras.length) body.loras = loras; // one LoRA too: the stack is the one form the view sends
    if (posePath) Object.assign(body, { poseImagePath: posePath, controlnetStrength: Number(cnStrength.value) });
    if (where.value) body.where = where.value;
    keep();
    submit.disabled = true;
    try {
      shown(await api("/jobs", { method: "POST", body: { ...body, source: SOURCE } }));
    } catch (err) {
      replace(problems, h("li", {}, problem(err, "span")));
    } finally {
      submit.disabled = false;
    }
  });

  // A job this view just submitted (the form, or an action on a result): first in the gallery, in view.
  let latest = null;
  function shown(answer) {
    const jobs = answer.jobs || [answer]; // a variations group answers its jobs
    for (const job of jobs.slice().reverse()) list.upsert(job);
    latest = jobs[0].id;
    const card = list.cards.get(latest);
    for (const c of gallery.querySelectorAll(".job.latest")) c.classList.remove("latest");
    if (card) { card.classList.add("latest"); card.scrollIntoView({ block: "nearest", behavior: "smooth" }); }
  }

  const list = jobList(gallery, ctx.events, { source: SOURCE, limit: 24, empty: "Nothing generated here yet.",
    actions: (job) => resultActions(job, { ctx, submit: shown, edit: (params) => { sessionStorage.setItem("studio.prefill", JSON.stringify(params)); remount(); } }) });
  const off = ctx.events.on((ev) => {
    if (ev.type === "job.succeeded" && ev.job && ev.job.id === latest) toast("Done", "good");
  });
  // "Edit" on a result: the form drawn again with that job's parameters (kept from then on).
  function remount() {
    off(); offBackends(); list.off();
    root.replaceChildren();
    cleanup = mount(root, ctx, args);
    window.scrollTo({ top: 0 });
  }
  let cleanup = null;

  // /health (the backends) and GET /models (where each checkpoint runs) are asked again when a backend joins
  // or leaves routing (backend.up / backend.down on /events) and when the artist opens the checkpoint list:
  // a checkpoint listed while the backends were unprobed becomes runnable without a reload.
  const loadHealth = () => api("/health").then((health) => {
    backends = health.backends;
    const current = where.options.length > 1 ? where.value : (prefill.where || "");
    replace(where, whereChoices(backends, cfg.defaultWhere).map(([v, label]) =>
      h("option", { value: v, selected: v === current }, label)));
    setLimits();
    check();
  });
  let shownModels = ""; // the list as last drawn: redrawn only when it changed (an open list stays open)
  const showModels = ([listed, { loras }]) => {
    models = listed;
    modelsSettled = true;
    stack.setLoras(withTriggers(listed, loras));
    const current = checkpoint.value;
    const all = allModels(listed);
    const drawn = JSON.stringify([current, all.map((m) => [m.name, m.family, m.familyNote, m.backends])]);
    if (drawn !== shownModels) {
      shownModels = drawn;
      checkpointOptions(checkpoint, listed, current);
    }
    setLimits();
    check();
  };
  // One request at a time; asks made while one is out make one more after it.
  let loading = null;
  let askedAgain = false;
  const loadModels = () => {
    if (loading) { askedAgain = true; return; }
    loading = Promise.all([api("/models"), api("/loras").catch(() => ({ loras: [] }))]).then(showModels)
      .catch((err) => { modelsSettled = true; setLimits(); check(); toast(err, "error"); })
      .finally(() => { loading = null; if (askedAgain) { askedAgain = false; loadModels(); } });
  };
  loadHealth().catch((err) => toast(err, "error"));
  loadModels();
  // Opening the list (a click, or the keyboard reaching it) asks again, at most every few seconds.
  let askedAt = Date.now();
  const reopened = () => { if (Date.now() - askedAt > REOPEN_MS) { askedAt = Date.now(); loadModels(); } };
  checkpoint.addEventListener("pointerdown", reopened);
  checkpoint.addEventListener("focus", reopened);
  const offBackends = ctx.events.on((ev) => {
    if (ev.type !== "backend.up" && ev.type !== "backend.down") return;
    askedAt = Date.now();
    loadHealth().catch(() => {}).then(loadModels);
  });

  root.append(h("h1", {}, "Generate"), h("div", { class: "split" }, form, h("section", { class: "result-col", "aria-label": "results" },
    h("h2", {}, "Results"), gallery)));
  check();
  return () => { offBackends(); if (cleanup) cleanup(); else { off(); list.off(); } };
}
