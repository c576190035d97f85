// Dataset: a training folder's images with their captions, edited in place; `dataset check`'s findings
// next to the images they name (missing caption, trigger not first, mirrored flips, near-duplicates);
// flip the images picked; caption proposals to confirm, edit or reject (proposals.js).
import { api } from "../api.js";
import { h, picture, problem, replace, toast } from "../dom.js";
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
  root.append(h("h1", {}, "Dataset"), form, summary, proposals.element, grid);

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
  return () => clearTimeout(recheck);
}
