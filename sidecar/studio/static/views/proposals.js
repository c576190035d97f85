// The Dataset view's caption proposals: the rows of the folder's captions.csv that a tagger or the vision
// model proposed (`sidecar dataset caption DIR --auto`, or the Propose button here), each to confirm as it
// is, edit then confirm, or reject. Confirming writes the image's caption (the trigger word first) and its
// flip's (plus `mirrored`); a confirmed row is never proposed again. `dataset check` passes once none is left.
import { api } from "../api.js";
import { h, picture, replace, toast } from "../dom.js";
import { explain } from "../messages.js";

const PARTS = ["framing", "pose", "background"];

export function proposalsPanel(onChange) {
  const panel = h("section", { class: "card proposals", hidden: true, "aria-label": "caption proposals" });
  let folder = null;
  let table = null;
  const drafts = new Map(); // file -> {part: text} typed but not confirmed yet: kept when the list is redrawn

  async function load(dir) {
    if (dir !== folder) drafts.clear();
    folder = dir;
    try {
      show(await api(`/dataset/captions?dir=${encodeURIComponent(dir)}`));
    } catch (err) { panel.hidden = true; }
  }

  function show(data) {
    table = data;
    panel.hidden = false;
    const waiting = data.rows.filter((r) => r.status === "proposed");
    const proposer = h("select", { name: "proposer", "aria-label": "proposer" },
      h("option", { value: "auto" }, "tagger, else vision model"), h("option", { value: "tagger" }, "WD14 tagger"),
      h("option", { value: "ollama" }, "vision model (Ollama)"));
    const proposeButton = h("button", { type: "button", dataset: { action: "propose" },
      onclick: () => propose(proposeButton, proposer.value) }, "Propose captions");
    const confirmAll = waiting.length > 1 ? h("button", { type: "button", class: "primary", dataset: { action: "confirm-all" },
      onclick: () => confirm(waiting.map((r) => values(r.file)), confirmAll) }, `Confirm all ${waiting.length}`) : null;
    const confirmed = data.rows.filter((r) => r.status === "confirmed").length;
    replace(panel,
      h("div", { class: "row" }, h("h2", {}, "Caption proposals"),
        h("span", { class: "muted small" }, waiting.length ? `${waiting.length} to check` : "none waiting",
          ` · ${confirmed} confirmed · ${data.unlisted.length} without a row · trigger first: ${data.triggerWord}`)),
      h("div", { class: "row" }, proposer, proposeButton, confirmAll),
      data.proposer ? h("p", { class: "small muted" }, `proposed by ${data.proposer}`) : null,
      Object.keys(data.unfilled || {}).length ? h("p", { class: "small warn" },
        Object.entries(data.unfilled).map(([name, parts]) => `${name}: no proposal for ${parts.join(", ")}`).join(" · ")) : null,
      h("div", { class: "proposal-list" }, waiting.map(row)));
  }

  function row(r) {
    const draft = drafts.get(r.file) || {};
    const inputs = Object.fromEntries(PARTS.map((p) => [p, h("input", { name: p, value: draft[p] ?? r[p],
      "aria-label": `${p} of ${r.file}`, placeholder: p, maxLength: 80,
      oninput: (e) => { drafts.set(r.file, { ...(drafts.get(r.file) || {}), [p]: e.target.value }); preview(); } })]));
    const caption = h("p", { class: "caption-preview small" });
    const flip = r.flip ? h("p", { class: "caption-preview small muted" }) : null;
    function preview() {
      const text = [table.triggerWord, ...PARTS.map((p) => inputs[p].value.trim())].join(", ");
      caption.textContent = text;
      if (flip) flip.textContent = `${r.flip}: ${text}, mirrored`;
    }
    preview();
    const confirmButton = h("button", { type: "button", class: "primary small", dataset: { action: "confirm" },
      onclick: () => confirm([values(r.file)], confirmButton) }, "Confirm");
    const rejectButton = h("button", { type: "button", class: "small danger", dataset: { action: "reject" },
      onclick: () => reject(r.file, rejectButton) }, "Reject");
    return h("article", { class: "proposal", dataset: { file: r.file } },
      picture(r.imageUrl, 1, 1, r.file),
      h("div", { class: "proposal-body" },
        h("div", { class: "row" }, h("span", { class: "name" }, r.file), r.flip ? h("span", { class: "badge" }, "has a flip") : null),
        h("div", { class: "cols parts" }, PARTS.map((p) => inputs[p])),
        caption, flip,
        h("div", { class: "row" }, confirmButton, rejectButton)));
  }

  function values(file) {
    const card = panel.querySelector(`.proposal[data-file="${CSS.escape(file)}"]`);
    return { file, ...Object.fromEntries(PARTS.map((p) => [p, card.querySelector(`input[name=${p}]`).value.trim()])) };
  }

  async function confirm(rows, button) {
    button.disabled = true;
    try {
      const out = await api("/dataset/captions/confirm", { method: "POST", body: { dir: folder, rows } });
      for (const r of rows) drafts.delete(r.file);
      toast(`${rows.length} caption(s) confirmed: ${out.written.join(", ")}`, "good");
      show(out.table);
      onChange();
    } catch (err) { button.disabled = false; toast(err, "error"); }
  }

  async function reject(file, button) {
    button.disabled = true;
    try {
      const out = await api("/dataset/captions/reject", { method: "POST", body: { dir: folder, files: [file] } });
      drafts.delete(file);
      show(out);
      toast(`${file}: proposal rejected; fill it in or propose again`, "info");
      onChange();
    } catch (err) { button.disabled = false; toast(err, "error"); }
  }

  async function propose(button, proposer) {
    button.disabled = true;
    button.textContent = "Proposing…";
    try {
      const out = await api("/dataset/captions/propose", { method: "POST", body: { dir: folder, proposer } });
      drafts.clear(); // new proposals replace what was typed over the old ones
      show(out);
      onChange();
    } catch (err) {
      button.disabled = false;
      button.textContent = "Propose captions";
      const fix = err.details && err.details.fix;
      panel.append(h("p", { class: "error", role: "alert", dataset: { code: err.code } }, explain(err).text,
        fix ? [" In a terminal: ", h("code", {}, fix)] : null, " Nothing was changed."));
    }
  }

  return { element: panel, load };
}
