// Dataset: a training folder's images with their captions, edited in place; `dataset check`'s findings
// next to the images they name (missing caption, trigger not first, mirrored flips, near-duplicates);
// flip the images picked; caption proposals to confirm, edit or reject (proposals.js); a new training
// folder built from reference images (figures found and cut, flips, captions, a regularisation set) as
// one daemon task, followed here, the folder then opened.
import { api } from "../api.js";
import { field, h, picture, problem, replace, toast } from "../dom.js";
import { followTask, stepWords } from "../tasks.js";
import { proposalsPanel } from "./proposals.js";

export function mount(root, ctx, args) {
  const dir = h("input", { name: "dir", placeholder: "/Users/you/lora/spyke", value: args[0] || localStorage.getItem("studio.dataset") || "" });
  const summary = h("div", { class: "summary" });
  const grid = h("div", { class: "dataset grid" });
  const selected = new Set();
  const flipButton = h("button", { type: "button", disabled: true, onclick: flipSelected }, "Flip selected");
  const form = h("form", { class: "row dataset-open" }, h("label", { class: "field grow" }, h("span", { class: "label" }, "Training folder"), dir),
    h("button", { type: "submit", class: "primary" }, "Open"), flipButton);
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  const proposals = proposalsPanel(() => load({ withProposals: false })); // its own answer is already shown
  const build = buildForm((folder) => { dir.value = folder; load(); });
  root.append(h("h1", {}, "Dataset"), form, build.element, summary, proposals.element, grid);

  function updateFlipButton() {
    flipButton.disabled = selected.size === 0;
    flipButton.textContent = selected.size ? `Flip ${selected.size} selected` : "Flip selected";
  }

  let pending = 0; // loads in flight: the grid says so (data-busy) while its contents may still be replaced
  async function load(options) {
    pending += 1;
    grid.dataset.busy = "1";
    try { await loadNow(options); } finally { if (--pending === 0) delete grid.dataset.busy; }
  }

  async function loadNow({ withProposals = true } = {}) {
    const folder = dir.value.trim();
    if (!folder) { replace(summary, h("p", { class: "muted" }, "Give the training folder's absolute path.")); return; }
    localStorage.setItem("studio.dataset", folder);
    history.replaceState(history.state, "", `#/dataset/${encodeURIComponent(folder)}`); // a link to this folder
    let data;
    try {
      data = await api(`/dataset?dir=${encodeURIComponent(folder)}`);
    } catch (err) { replace(summary, problem(err)); replace(grid); return; }
    selected.clear();
    updateFlipButton();
    render(data);
    if (withProposals) proposals.load(data.folder);
  }

  function render(data) {
    const general = data.findings.filter((f) => !f.file || !data.images.some((i) => i.name === f.file));
    replace(summary, h("div", { class: `card check ${data.ok ? "ok" : "bad"}` },
      h("strong", {}, data.ok ? "Ready to train" : "Not ready to train"),
      h("span", { class: "muted small" }, ` · ${data.sourceImages} source images + ${data.flips} flips · trigger ${data.triggerWord}`),
      general.length ? h("ul", { class: "findings" }, general.map((f) => finding(f, true))) : null));
    replace(grid, data.images.map((img) => imageCard(data, img)));
  }

  function finding(f, named = false) {
    return h("li", { class: `finding ${f.level}`, dataset: { check: f.check } }, h("b", {}, f.check), " ",
      named && f.file ? `${f.file}: ` : "", f.message);
  }

  function imageCard(data, img) {
    const mine = data.findings.filter((f) => f.file === img.name);
    const caption = h("textarea", { rows: 3, name: "caption", "aria-label": `caption of ${img.name}`, placeholder: "no caption yet" }, img.caption ?? "");
    const status = h("span", { class: "muted small save-state" }, img.caption === null ? "no caption file" : "");
    let saved = img.caption ?? "";
    async function save() {
      if (caption.value.trim() === saved.trim()) return;
      status.textContent = "saving…";
      try {
        const out = await api("/dataset/caption", { method: "PUT", body: { dir: data.folder, name: img.name, caption: caption.value } });
        saved = out.caption ?? "";
        status.textContent = "saved";
        card.dataset.saved = "1";
        clearTimeout(recheck);
        recheck = setTimeout(load, 600); // the findings follow the new caption
      } catch (err) { status.textContent = ""; toast(err, "error"); }
    }
    caption.addEventListener("blur", save);
    caption.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); caption.blur(); } });
    const pick = h("input", { type: "checkbox", "aria-label": `select ${img.name}`, disabled: img.flip,
      onchange: (e) => { if (e.target.checked) selected.add(img.name); else selected.delete(img.name); updateFlipButton(); } });
    const card = h("article", { class: `card dataset-image${mine.some((f) => f.level === "error") ? " has-error" : mine.length ? " has-warning" : ""}`, dataset: { name: img.name } },
      picture(img.imageUrl, img.width || 1, img.height || 1, img.name),
      h("div", { class: "row" }, pick, h("span", { class: "name" }, img.name), img.flip ? h("span", { class: "badge" }, "flip") : null,
        img.width ? h("span", { class: "muted small" }, `${img.width}×${img.height}`) : null),
      caption, status,
      mine.length ? h("ul", { class: "findings" }, mine.map((f) => finding(f))) : null);
    return card;
  }

  let recheck = null;
  async function flipSelected() {
    const names = [...selected];
    try {
      const out = await api("/dataset/flip", { method: "POST", body: { dir: dir.value.trim(), names } });
      toast(`${out.written.length} flip(s) written${out.skippedExisting.length ? `, ${out.skippedExisting.length} existed` : ""}`, "good");
      load();
    } catch (err) { toast(err, "error"); }
  }

  if (dir.value) load();
  return () => { clearTimeout(recheck); build.stop(); };
}

// "Build a training folder": the reference images (sheets) and a new folder; the daemon finds the
// figures, cuts them into squares, mirrors them, captions them and may draw a regularisation set.
function buildForm(opened) {
  const sheets = h("textarea", { name: "buildSheets", rows: 2, required: true, placeholder: "/Users/you/lora/refs/spyke_sheet.png" });
  const out = h("input", { name: "buildOut", required: true, placeholder: "/Users/you/lora/spyke", autocomplete: "off" });
  const size = h("input", { name: "buildSize", type: "number", min: 64, max: 4096, step: 64, value: 512 });
  const fit = h("select", { name: "buildFit" }, h("option", { value: "pad" }, "whole figure, padded"), h("option", { value: "crop" }, "fill the square"));
  const flip = h("input", { name: "buildFlip", type: "checkbox", checked: true });
  const captions = h("select", { name: "buildCaptions" }, h("option", { value: "propose" }, "propose captions to review"),
    h("option", { value: "table" }, "an empty caption table to fill in"), h("option", { value: "none" }, "none for now"));
  const trigger = h("input", { name: "buildTrigger", placeholder: "the usual one", autocomplete: "off", pattern: "[^,]+" });
  const reg = h("input", { name: "buildReg", type: "checkbox" });
  const regCount = h("input", { name: "buildRegCount", required: true, type: "number", min: 1, max: 1000, value: 100 });
  const regPrompt = h("input", { name: "buildRegPrompt", required: true, value: "anime character, full body", autocomplete: "off" });
  const state = h("div", { class: "build-state", role: "status", "aria-live": "polite" });
  const start = h("button", { type: "submit", class: "primary" }, "Build");
  const element = h("details", { class: "card build" }, h("summary", {}, "Build a training folder"),
    h("form", { class: "form" },
      field("Reference images", sheets, "each picture's full path, one a line: character sheets or single figures"),
      field("New training folder", out, "its full path; a new or empty folder"),
      h("div", { class: "cols" }, field("Square size", size, "pixels"), field("Fit", fit), field("Caption words start with", trigger)),
      h("div", { class: "cols" }, field("Captions", captions),
        h("label", { class: "field checkbox" }, flip, h("span", { class: "label" }, "Add mirrored copies"))),
      h("div", { class: "cols" }, h("label", { class: "field checkbox" }, reg, h("span", { class: "label" }, "Also draw a regularisation set")),
        field("Images in it", regCount, "100–200 is usual"), field("Its prompt", regPrompt, "the kind of character, no trigger word")),
      h("div", { class: "row" }, start), state));
  const form = element.querySelector("form");
  const regShown = () => { regCount.disabled = regPrompt.disabled = !reg.checked; };
  reg.addEventListener("change", regShown);
  regShown();
  let stop = () => {};
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!form.checkValidity()) { form.reportValidity(); return; }
    const body = { sheets: sheets.value.split("\n").map((s) => s.trim()).filter(Boolean), out: out.value.trim(),
      size: Number(size.value), fit: fit.value, flip: flip.checked, captions: captions.value };
    if (trigger.value.trim()) body.trigger = trigger.value.trim();
    if (reg.checked) body.reg = { count: Number(regCount.value), prompt: regPrompt.value.trim() };
    start.disabled = true;
    let task;
    try { task = await api("/dataset/build", { method: "POST", body }); } catch (err) {
      start.disabled = false;
      replace(state, problem(err));
      return;
    }
    stop = followTask(task.id, (t) => {
      state.dataset.status = t.status;
      if (t.status === "running") {
        replace(state, h("div", { class: "progress", role: "progressbar", "aria-label": "building the training folder",
          "aria-valuemin": 0, "aria-valuemax": t.commands.length, "aria-valuenow": t.step },
          h("div", { class: "track" }, h("div", { class: "bar" })),
          h("span", { class: "small step" }, `step ${t.step + 1} of ${t.commands.length}: ${stepWords(t)}`)));
        state.querySelector(".bar").style.width = `${Math.round((100 * t.step) / t.commands.length)}%`; // CSSOM: the page's CSP allows no style attribute
        return;
      }
      start.disabled = false;
      if (t.status === "succeeded") {
        replace(state, h("p", { class: "small" }, h("span", { class: "badge succeeded" }, "built"), " The new folder is open below."));
        toast("training folder built", "good");
        opened(t.result.dir);
      } else {
        replace(state, h("p", { class: "error problem" }, t.status === "cancelled" ? "The build was cancelled."
          : `The build stopped while ${stepWords(t)}. Its log says why.`),
          t.output.length ? h("details", { class: "log" }, h("summary", {}, "Log"), h("pre", {}, t.output.join("\n"))) : null);
      }
    }, (err) => { start.disabled = false; replace(state, problem(err)); });
  });
  return { element, stop: () => stop() };
}
