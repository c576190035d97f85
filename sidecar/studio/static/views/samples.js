// The trainer's samples in the LoRAs view: a strip of thumbnails under each checkpoint, the grid of every
// checkpoint's samples beside the sweep (prompts down, checkpoints across, a Pick button per checkpoint),
// a viewer that shows one whole (Escape or a click closes it), and the quality gate's findings under the
// training form.
import { h, replace } from "../dom.js";

const THUMB = 56;

// Which of the run's sample prompts an image drew, from its name: kohya's and the embedded trainer's
// `<name>_<step 6>_<index 2>_...png`, ai-toolkit's `<time>__<step 9>_<index>.jpg`.
function promptIndex(name) {
  let m = /_\d{6}_(\d{2})(?:_\d+)*\.\w+$/.exec(name);
  if (m) return Number(m[1]);
  m = /^\d+__\d{9}_(\d+)\.\w+$/.exec(name);
  return m ? Number(m[1]) : null;
}

// A checkpoint's samples (the file names its status lists) as what the page shows: url, prompt, index.
function samplesOf(run, checkpoint) {
  const prompts = (run.params && run.params.samplePrompts) || [];
  return (checkpoint.samples || []).map((name) => {
    const index = promptIndex(name);
    return { fileName: name, url: `/loras/${run.id}/samples/${encodeURIComponent(name)}`, index,
      prompt: index === null ? null : prompts[index] ?? null };
  });
}

// One sample whole, with its prompt: a modal dialog (the browser traps focus and closes it on Escape).
export function openSample(sample, label) {
  let dialog = document.getElementById("sample-viewer");
  if (!dialog) {
    dialog = h("dialog", { id: "sample-viewer", class: "viewer", "aria-label": "sample image" });
    dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
    document.body.append(dialog);
  }
  replace(dialog,
    h("figure", {}, h("img", { src: sample.url, alt: sample.prompt || sample.fileName }),
      h("figcaption", {}, h("strong", {}, label), " ", sample.prompt || sample.fileName)),
    h("form", { method: "dialog" }, h("button", { type: "submit", class: "small" }, "Close")));
  dialog.showModal();
}

function thumb(sample, label) {
  const what = `${label}: ${sample.prompt || sample.fileName}`;
  return h("button", { type: "button", class: "sample-thumb", title: what, "aria-label": `show sample, ${what}`,
    dataset: { file: sample.fileName }, onclick: () => openSample(sample, label) },
  h("img", { src: sample.url, alt: "", width: THUMB, height: THUMB, loading: "lazy", decoding: "async" }));
}

// The thumbnails of one checkpoint (nothing when its trainer wrote none at that step).
export function sampleStrip(run, checkpoint) {
  const list = samplesOf(run, checkpoint);
  if (!list.length) return null;
  const label = checkpoint.final ? `final (step ${checkpoint.step})` : `step ${checkpoint.step}`;
  return h("div", { class: "samples", role: "group", "aria-label": `samples at ${label}` }, list.map((s) => thumb(s, label)));
}

// Prompts down, checkpoints across: what training changed, one prompt at a time; Pick promotes a column.
export function sampleGrid(run, checkpoints, onPick, pickStep) {
  const cols = checkpoints.filter((c) => (c.samples || []).length && !c.final)
    .map((c) => ({ step: c.step, samples: samplesOf(run, c) }));
  if (!cols.length) return null;
  const prompts = [...new Map(cols.flatMap((c) => c.samples.map((s) => [s.index, s.prompt]))).entries()].sort((a, b) => a[0] - b[0]);
  return h("details", { class: "sample-grid", open: true },
    h("summary", {}, "The trainer's samples by checkpoint"),
    h("p", { class: "muted small" }, "Each checkpoint drew the run's sample prompts from the same noise while it trained: compare them beside the sweep's renders, and pick one."),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "prompt"), cols.map((c) => h("th", { scope: "col", dataset: { step: c.step } },
        h("span", {}, `step ${c.step}`), " ",
        h("button", { type: "button", class: `small${pickStep === c.step ? " primary" : ""}`, "aria-label": `pick step ${c.step}`,
          onclick: () => onPick(c) }, "Pick"))))),
      h("tbody", {}, prompts.map(([index, prompt]) => h("tr", {},
        h("th", { scope: "row", class: "small" }, prompt || `prompt ${index + 1}`),
        cols.map((c) => {
          const s = c.samples.find((x) => x.index === index);
          return h("td", {}, s ? thumb(s, `step ${c.step}`) : "–");
        })))))));
}

// The quality gate's answer (dataset_not_ready): each finding with its file and its fix.
export function gateFindings(err) {
  const d = err.details || {};
  const findings = d.findings || [];
  return h("div", { class: "gate-findings card", role: "alert" },
    h("h3", {}, "The training set is not ready"),
    h("p", { class: "small" }, `For a ${d.preset || "character"} LoRA on ${d.family || "this model"}: at least ${d.minImages} images, each at least ${d.minSide} px on its short side, every caption starting with the trigger word, no near-duplicates.`),
    h("ul", {}, findings.map((f) => h("li", { dataset: { check: f.check } },
      h("strong", {}, f.file || f.check), `: ${f.message}. `, h("span", { class: "fix" }, `Fix: ${f.fix}.`)))),
    (d.findingCount || 0) > findings.length ? h("p", { class: "muted small" }, `… and ${d.findingCount - findings.length} more.`) : null,
    h("p", { class: "muted small" }, "Fix them (the Dataset view checks a folder), or tick “Train anyway” to train past them."));
}
