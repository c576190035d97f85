// Refine a page in the Pages view: the artist's feedback (and, ticked, a look at the picked version) goes
// to the daemon's POST /project/pages/{c}/{p}/refine, which asks the local Ollama; the answer shows as a
// diff (the prompt before and after, tags added and removed, changes refused to keep the character) before
// anything happens. Then: render with the refined prompt (its refinedFrom rides along and lands in the log
// entry, as `generate --refine` records it), or write it as the page's prompt (as `--write` does). A
// failure (Ollama not running, a model not pulled) shows here with its fix and changes nothing.
import { api } from "../api.js";
import { field, h, replace, toast } from "../dom.js";
import { explain } from "../messages.js";

export function refineBox({ page, chapter, version, onRender, onWritten }) {
  const feedback = h("textarea", { name: "feedback", rows: 2, required: true, maxLength: 2000,
    placeholder: "look left, dusk light, less cluttered" });
  const look = version && version.imageExists
    ? h("input", { type: "checkbox", name: "look", "aria-label": `look at v${version.version}` }) : null;
  const ask = h("button", { type: "submit", class: "primary", dataset: { action: "ask-refine" } }, "Refine");
  const out = h("div", { class: "refine-out", "aria-live": "polite" });
  const box = h("form", { class: "card form refine" },
    h("h3", {}, `Refine ${page.name}`),
    field("Feedback", feedback, "what to change, in words: the trigger word and the locked traits stay"),
    look ? h("label", { class: "row small" }, look, `look at v${version.version} first (the vision model)`) : null,
    h("div", { class: "row" }, ask, h("button", { type: "button", class: "ghost", onclick: () => box.remove() }, "Close")),
    out);
  let answer = null;

  box.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { feedback: feedback.value.trim() };
    if (!body.feedback) return;
    if (look && look.checked) body.lookVersion = version.version;
    ask.disabled = true;
    replace(out, h("p", { class: "muted small" }, "asking the local model…"));
    try {
      answer = await api(`/project/pages/${chapter}/${page.page}/refine`, { method: "POST", body });
      showAnswer();
    } catch (err) {
      answer = null;
      replace(out, failure(err));
    } finally {
      ask.disabled = false;
    }
  });

  function showAnswer() {
    const a = answer;
    const lines = a.diff.map((line) => {
      const kind = line.startsWith("+ ") ? "added" : line.startsWith("- ") ? "removed" : "kept";
      return h("li", { class: `tag ${kind}` }, line.slice(2));
    });
    const refused = a.changes.filter((c) => c.status === "refused");
    const renderButton = h("button", { type: "button", class: "primary", dataset: { action: "render-refined" },
      disabled: !a.changed || !page.request, title: page.request ? "" : page.requestError || "no request for this page",
      onclick: () => onRender({ ...page.request, prompt: a.refined, refinedFrom: a.refinedFrom }) }, "Render refined");
    const writeButton = h("button", { type: "button", dataset: { action: "write-refined" }, disabled: !a.changed,
      onclick: () => write(writeButton) }, "Write as the page's prompt");
    replace(out,
      h("p", { class: "small" }, h("b", {}, a.refinedFrom.model), a.summary ? ` · ${a.summary}` : "",
        a.changed ? "" : h("span", { class: "muted" }, " · the prompt is unchanged")),
      a.observations && a.observations.length
        ? h("p", { class: "small muted observations" }, `seen in v${version.version}: ${a.observations.join("; ")}`) : null,
      h("div", { class: "prompt-diff" },
        h("div", {}, h("span", { class: "label small muted" }, "before"), h("p", { class: "prompt-before" }, a.original)),
        h("div", {}, h("span", { class: "label small muted" }, "after"), h("p", { class: "prompt-after" }, a.refined))),
      h("ul", { class: "tag-diff" }, lines),
      refused.length ? h("ul", { class: "refused small" }, refused.map((c) =>
        h("li", {}, `refused ${c.op} “${c.tag}”: ${c.note}`))) : null,
      a.warnings.length ? h("ul", { class: "warnings small" }, a.warnings.map((w) => h("li", {}, w))) : null,
      h("div", { class: "row" }, renderButton, writeButton));
  }

  async function write(button) {
    button.disabled = true;
    try {
      const updated = await api(`/project/pages/${chapter}/${page.page}/prompt`,
        { method: "PUT", body: { prompt: answer.refined, expected: answer.original } });
      page = updated;
      toast(`${page.name}: the refined prompt is the page's prompt now`, "good");
      button.textContent = "Written";
      onWritten(updated);
    } catch (err) {
      button.disabled = false;
      out.append(failure(err));
    }
  }

  return { element: box, focus: () => feedback.focus() };
}

function failure(err) {
  const fix = err.details && err.details.fix;
  const { text } = explain(err);
  return h("div", { class: "refine-error error", role: "alert", dataset: { code: err.code } },
    text, fix ? [" In a terminal: ", h("code", {}, fix)] : null,
    h("p", { class: "small muted" }, "Nothing was changed."));
}
