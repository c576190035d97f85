// Explorer: the installed LoRAs with their family, trigger word and metadata, each with its showcase (a
// few fixed prompts on one seed, rendered once and kept until the LoRA file changes), and two LoRA
// combinations with their strengths compared side by side on the same seeds (one column each), with a
// link to the compare's contact sheet (one PNG of both columns, to save or share).
import { api } from "../api.js";
import { field, h, picture, replace, toast } from "../dom.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function thumbs(jobs, label) {
  return h("div", { class: "explorer-thumbs" }, jobs.map((j) => {
    const p = j.params || {};
    return picture(j.status === "succeeded" ? `/jobs/${j.id}/image?size=256` : null, p.width, p.height,
      `${label}, seed ${p.seed}`, { class: `pic ${j.status === "succeeded" ? "" : `empty ${j.status}`}`, dataset: { job: j.id, status: j.status } });
  }));
}

// Jobs shown until they end: asked again every 0.8 s.
function follow(ids, draw, timers) {
  const tick = async () => {
    let jobs;
    try { jobs = await Promise.all(ids.map((id) => api(`/jobs/${id}`))); } catch { return; }
    draw(jobs);
    if (!jobs.every((j) => TERMINAL.has(j.status))) timers.push(setTimeout(tick, 800));
  };
  tick();
}

export function mount(root, ctx) {
  const timers = [];
  const list = h("div", { class: "explorer-loras" }, h("p", { class: "muted" }, "…"));
  const compareBox = h("form", { class: "card form compare", "aria-label": "compare two LoRA combinations" });
  const grid = h("div", { class: "compare-grid", "aria-live": "polite" });
  // The size every render here asks for (empty: the daemon's default for the model).
  const width = h("input", { type: "number", name: "width", min: 64, step: 8, placeholder: "default", class: "narrow" });
  const height = h("input", { type: "number", name: "height", min: 64, step: 8, placeholder: "default", class: "narrow" });
  const size = () => Object.fromEntries([["width", width], ["height", height]].filter(([, el]) => el.value)
    .map(([k, el]) => [k, Number(el.value)]));
  root.append(h("h1", {}, "Explorer"),
    h("div", { class: "row" }, field("Width", width), field("Height", height),
      h("span", { class: "small muted" }, "the size of the showcases and comparisons")),
    h("div", { class: "explorer" }, list, h("div", {}, compareBox, grid)));
  let loras = [];

  async function load() {
    try { loras = (await api("/explorer/loras")).loras; } catch (err) { toast(err, "error"); return; }
    replace(list, loras.length ? loras.map(card) : h("p", { class: "muted empty" }, "No LoRA is installed yet: promote a training run's file in LoRAs."));
    drawCompare();
  }

  function card(lora) {
    const info = lora.info;
    const shown = h("div", { class: "showcase" });
    const state = h("span", { class: "small muted", dataset: { showcase: lora.showcase.status } },
      { none: "never shown", cached: "shown before", stale: "file changed since" }[lora.showcase.status]);
    const button = h("button", { type: "button", class: "small", dataset: { action: "showcase" } },
      lora.showcase.status === "cached" ? "Show" : lora.showcase.status === "stale" ? "Render again (file changed)" : "Showcase");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const answer = await api(`/explorer/loras/${encodeURIComponent(lora.id)}/showcase`, { method: "POST", body: size() });
        state.textContent = "shown before";
        state.dataset.showcase = "cached";
        follow(answer.jobs.map((j) => j.id), (jobs) => replace(shown, thumbs(jobs, lora.id),
          h("p", { class: "small muted" }, answer.cached ? "from the cache (this LoRA file was shown before)" : "rendered for this file")), timers);
      } catch (err) { toast(err, "error"); }
      button.disabled = false;
    });
    const facts = [info.networkDim ? `dim ${info.networkDim}` : null, info.steps ? `${info.steps} steps` : null,
      info.baseModel, info.resolution].filter(Boolean).join(" · ");
    return h("article", { class: "card lora", dataset: { lora: lora.id, family: lora.family } },
      h("div", { class: "row" }, h("h2", {}, lora.id), h("span", { class: "pill" }, lora.family)),
      h("p", { class: "small" }, "trigger ", h("code", {}, lora.trigger)),
      facts ? h("p", { class: "small muted" }, facts) : null,
      h("div", { class: "row" }, button, state),
      shown);
  }

  function stackRows(column) {
    return [0, 1, 2].map((i) => {
      const lora = h("select", { name: `${column}${i}`, "aria-label": `combination ${column.toUpperCase()}, LoRA ${i + 1}` },
        h("option", { value: "" }, "—"), loras.map((l) => h("option", { value: l.id }, l.id)));
      const strength = h("input", { type: "number", name: `${column}${i}s`, min: 0, max: 2, step: 0.05, value: 0.8, class: "narrow",
        "aria-label": `strength of combination ${column.toUpperCase()}'s LoRA ${i + 1}` });
      return { row: h("div", { class: "row" }, lora, strength), lora, strength };
    });
  }

  function drawCompare() {
    const prompt = h("textarea", { name: "prompt", rows: 2, required: true, maxLength: 4000, placeholder: "1boy, rooftop, dusk" });
    const seed = h("input", { type: "number", name: "seed", min: 0, value: 1, class: "narrow" });
    const rows = h("input", { type: "number", name: "rows", min: 1, max: 4, value: 2, class: "narrow" });
    const a = stackRows("a");
    const b = stackRows("b");
    if (loras[0]) a[0].lora.value = loras[0].id;
    if (loras[1]) b[0].lora.value = loras[1].id;
    else if (loras[0]) { b[0].lora.value = loras[0].id; b[0].strength.value = 0.4; }
    const go = h("button", { type: "submit", class: "primary", dataset: { action: "compare" } }, "Compare");
    replace(compareBox, h("h2", {}, "Compare two combinations"), field("Prompt", prompt),
      h("div", { class: "cols compare-cols" },
        h("fieldset", {}, h("legend", {}, "A"), a.map((r) => r.row)),
        h("fieldset", {}, h("legend", {}, "B"), b.map((r) => r.row))),
      h("div", { class: "row" }, field("First seed", seed), field("Seeds", rows)), h("div", { class: "row" }, go));
    // The contact sheet's column heads: the stack itself, as far as a label goes (40 characters).
    const describe = (col, st) => `${col}: ${Object.entries(st).map(([id, v]) => `${id} ${v}`).join(" + ") || "no LoRA"}`.slice(0, 40);
    const stack = (rowsOf) => Object.fromEntries(rowsOf.filter((r) => r.lora.value).map((r) => [r.lora.value, Number(r.strength.value)]));
    compareBox.onsubmit = async (e) => {
      e.preventDefault();
      const body = { prompt: prompt.value.trim(), seed: Number(seed.value), rows: Number(rows.value),
        a: { label: describe("A", stack(a)), loras: stack(a) }, b: { label: describe("B", stack(b)), loras: stack(b) }, ...size() };
      if (!body.prompt) return;
      go.disabled = true;
      try {
        const answer = await api("/explorer/compare", { method: "POST", body });
        follow(answer.cells.map((c) => c.job.id), (jobs) => drawGrid(answer, jobs), timers);
      } catch (err) { toast(err, "error"); }
      go.disabled = false;
    };
  }

  function drawGrid(answer, jobs) {
    const label = (c) => Object.entries(answer.columns[c].loras).map(([id, s]) => `${id} ${s ?? ""}`).join(" + ") || "no LoRA";
    replace(grid, h("div", { class: "compare-head" }, h("b", {}, `A: ${label("a")}`), h("b", {}, `B: ${label("b")}`)),
      answer.seeds.map((seed, r) => h("div", { class: "compare-row", dataset: { seed } },
        ["a", "b"].map((c, k) => thumbs([jobs[r * 2 + k]], `${c.toUpperCase()} seed ${seed}`)))),
      // One PNG of both columns (kept by the daemon once every cell has finished): to save or share.
      h("p", { class: "small" }, h("a", { href: answer.sheet, target: "_blank", rel: "noopener", dataset: { action: "sheet" },
        download: `compare-${answer.groupId.slice(0, 8)}.png` }, "Contact sheet (PNG)"),
        jobs.every((j) => ["succeeded", "failed", "cancelled"].includes(j.status)) ? null : h("span", { class: "muted" }, " · a preview until every image is done")));
  }

  load();
  return () => timers.forEach(clearTimeout);
}
