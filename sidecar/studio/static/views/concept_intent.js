// The intent beside a concept: the preferences its rounds' feedback showed (each dismissable), the
// artist's own notes (fed to the local model with them every round), and the rounds in a line each.
import { api } from "../api.js";
import { h, toast } from "../dom.js";

export function intentBox(view, name, redraw) {
  const intent = view.intent;
  const save = async (notes, dismissed) => {
    try { redraw(await api(`/concepts/${name}/intent`, { method: "PUT", body: { notes, dismissed } })); }
    catch (err) { toast(err, "error"); }
  };
  const notes = h("textarea", { name: "notes", rows: 3, "aria-label": "notes for the model",
    placeholder: "one a line: warm colours, no text" }, intent.notes.join("\n"));
  return [
    h("h2", {}, "Intent"),
    view.preferences.length
      ? h("ul", { class: "preferences small" }, view.preferences.map((p) => h("li", { dataset: { preference: p.text } },
        `${p.text}${p.count > 1 ? ` ×${p.count}` : ""} `,
        h("button", { type: "button", class: "small ghost", "aria-label": `dismiss ${p.text}`,
          onclick: () => save(intent.notes, [...intent.dismissed, p.text]) }, "dismiss"))))
      : h("p", { class: "small muted" }, "Nothing learned yet: pick and reject with a word."),
    h("label", { class: "field" }, h("span", { class: "label" }, "Notes (the model reads them)"), notes),
    h("button", { type: "button", class: "small", dataset: { action: "save-notes" },
      onclick: () => save(notes.value.split("\n").map((n) => n.trim()).filter(Boolean), intent.dismissed) }, "Save notes"),
    h("ol", { class: "rounds small muted" }, intent.rounds.map((r) => h("li", {},
      `${r.prompt.slice(0, 90)}${r.prompt.length > 90 ? "…" : ""}`,
      r.feedback ? ` · picked ${r.feedback.picks.length}, rejected ${r.feedback.rejects.length}` : ""))),
  ];
}
