// Generate: a form over POST /jobs with the profile's limits shown and checked before submit, a seed
// dice, a pose image picked from disk (previewed here, stored by the daemon), where it runs (a backend,
// a tag, local or any: the size limit is then the widest profile among those). The form is kept (this
// browser's localStorage) across views and reloads; Ctrl/Cmd+Enter submits. Its results are a gallery
// of the jobs the studio submitted (kept by the daemon: GET /jobs?source=studio, so a reload or another
// browser shows them), each with its live previews while it runs, and on each: retry, variations, more
// like this (img2img from it, with a denoise slider), upscale for print, save to a page, the workflow.
import { api } from "../api.js";
import { allowedBy, whereChoices } from "../backends.js";
import { field, h, problem, replace, toast } from "../dom.js";
import { jobList } from "../jobs.js";
import { resultActions } from "./results.js";

const SEED_MAX = 2 ** 32 - 1;
const KEPT = "studio.generate.form"; // the form's values, as the artist left them
const SOURCE = "studio"; // the jobs this view submits, and lists

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
  const lora = select("loraId", [["", "none"]], prefill.loraId || "");
  const loraStrength = number("loraStrength", prefill.loraStrength ?? d.loraStrength, { min: lim.loraStrength.min, max: lim.loraStrength.max, step: 0.05 });
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
  const width = number("width", prefill.width ?? prof.maxWidth, { min: 64, max: prof.maxWidth, step: prof.multipleOf });
  const height = number("height", prefill.height ?? prof.maxHeight, { min: 64, max: prof.maxHeight, step: prof.multipleOf });
  const widthHint = h("span", {});
  const heightHint = h("span", {});
  const profHint = h("span", { class: "muted small" });
  const where = h("select", { name: "where" }, h("option", { value: "" }, `default (${cfg.defaultWhere})`));
  let backends = [];
  const setLimits = () => {
    const chosen = allowedBy(where.value || cfg.defaultWhere, backends);
    const profiles = [...new Set(chosen.map((b) => b.profile))].map((n) => cfg.profiles[n]).filter(Boolean);
    prof = profiles.length ? profiles.reduce((a, b) => (b.maxWidth * b.maxHeight > a.maxWidth * a.maxHeight ? b : a)) : cfg.profile;
    width.max = prof.maxWidth; height.max = prof.maxHeight;
    widthHint.textContent = `≤ ${prof.maxWidth}, multiple of ${prof.multipleOf}`;
    heightHint.textContent = `≤ ${prof.maxHeight} (${prof.name})`;
    profHint.textContent = prof.description;
  };
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
    if (w > prof.maxWidth || hh > prof.maxHeight) out.push(`${w}×${hh} is over the ${prof.name} profile's ${prof.maxWidth}×${prof.maxHeight}`);
    if (w % prof.multipleOf || hh % prof.multipleOf) out.push(`width and height must be multiples of ${prof.multipleOf}`);
    if (!prompt.value.trim()) out.push("a prompt is needed");
    replace(problems, out.map((p) => h("li", {}, p)));
    submit.disabled = out.length > 0;
    return out.length === 0;
  }

  const form = h("form", { class: "card form generate", novalidate: true },
    field("Prompt", prompt),
    field("Negative prompt", negative),
    h("div", { class: "cols" },
      field("LoRA", lora), field("LoRA strength", loraStrength, `${lim.loraStrength.min}–${lim.loraStrength.max}`)),
    h("div", { class: "cols" },
      field("Seed", h("div", { class: "inline" }, seed, dice)),
      field("Steps", steps, `${lim.steps.min}–${lim.steps.max}`),
      field("CFG", cfgScale, `${lim.cfg.min}–${lim.cfg.max}`)),
    h("div", { class: "cols" }, field("Sampler", sampler), field("Scheduler", scheduler)),
    h("div", { class: "cols" },
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
    const values = { poseImagePath: posePath };
    for (const el of form.querySelectorAll("input[name], textarea[name], select[name]")) {
      if (el.type === "file") continue;
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
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!check()) return;
    const body = {
      prompt: prompt.value.trim(), negativePrompt: negative.value, seed: Number(seed.value),
      steps: Number(steps.value), cfg: Number(cfgScale.value), sampler: sampler.value, scheduler: scheduler.value,
      resolution: { width: Number(width.value), height: Number(height.value) },
    };
    if (lora.value) Object.assign(body, { loraId: lora.value, loraStrength: Number(loraStrength.value) });
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
    off(); list.off();
    root.replaceChildren();
    cleanup = mount(root, ctx, args);
    window.scrollTo({ top: 0 });
  }
  let cleanup = null;

  api("/health").then((health) => {
    backends = health.backends;
    replace(where, whereChoices(backends, cfg.defaultWhere).map(([v, label]) =>
      h("option", { value: v, selected: v === (prefill.where || "") }, label)));
    setLimits();
    check();
  }).catch((err) => toast(err, "error"));

  api("/loras").then(({ loras }) => {
    for (const l of loras) lora.append(h("option", { value: l.id, selected: l.id === prefill.loraId }, `${l.id}${l.triggerWord ? ` (${l.triggerWord})` : ""}`));
  }).catch((err) => toast(err, "error"));

  root.append(h("h1", {}, "Generate"), h("div", { class: "split" }, form, h("section", { class: "result-col", "aria-label": "results" },
    h("h2", {}, "Results"), gallery)));
  check();
  return () => { if (cleanup) cleanup(); else { off(); list.off(); } };
}
