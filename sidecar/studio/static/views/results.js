// What the artist can do with a result in Generate's gallery, each through a route the daemon already
// has: retry (POST /jobs/{id}/retry: the same request, seed included), variations (the same request,
// four new seeds: `variations`), more like this (img2img from this image: `initJobId` and a denoise
// slider), upscale for print (`initJobId` + `upscaleModel`: the image as it is, upscaled), save to a page
// (POST /project/pages/{c}/{p}/versions: the page's next version, as `generate` writes it), edit (the
// form with these parameters: checkpoint and LoRA stack included) and the workflow (GET /jobs/{id}: the graph, to load in ComfyUI).
import { api } from "../api.js";
import { field, h, replace, toast } from "../dom.js";

const SEED_MAX = 2 ** 32 - 1;
const VARIATIONS = 4;
const COPIED = ["prompt", "negativePrompt", "loraId", "loraStrength", "steps", "cfg", "sampler", "scheduler",
  "checkpoint", "poseImagePath", "controlnetStrength"];

// The request that made this job, as POST /jobs takes it (without its seed, its init image, its upscale).
export function requestOf(job) {
  const p = job.params || {};
  const body = {};
  for (const key of COPIED) if (p[key] !== null && p[key] !== undefined) body[key] = p[key];
  // The whole LoRA stack, as the job applied it (the daemon also names its first as loraId: not both forms).
  if (Array.isArray(p.loras) && p.loras.length) {
    delete body.loraId; delete body.loraStrength;
    body.loras = p.loras.map((l) => ({ id: l.id, strength: l.strength }));
  }
  if (p.width && p.height) body.resolution = { width: p.width, height: p.height };
  if (job.where) body.where = job.where;
  return body;
}

let projectPages = null; // GET /project's chapters and pages, asked once per page load

export function resultActions(job, { ctx, submit, edit }) {
  const p = job.params || {};
  const fromParams = Boolean(p.prompt); // a whole workflow (reproduce) has no parameters to vary
  const panel = h("div", { class: "result-panel" });
  const send = async (button, path, body) => {
    button.disabled = true;
    try { submit(await api(path, { method: "POST", ...(body ? { body } : {}) })); } catch (err) { toast(err, "error"); }
    button.disabled = false;
  };
  const button = (label, action, title, onclick) =>
    h("button", { type: "button", class: "small", dataset: { action }, title, onclick: (e) => onclick(e.currentTarget) }, label);

  const buttons = [
    button("Retry", "retry", "the same request again, same seed", (b) => send(b, `/jobs/${job.id}/retry`)),
    fromParams ? button("Edit", "edit", "these settings in the form", () =>
      edit({ ...requestOf(job), ...(p.width ? { width: p.width, height: p.height } : {}), seed: p.seed })) : null,
  ];
  if (job.status === "succeeded") {
    buttons.push(
      fromParams ? button(`Variations`, "variations", `${VARIATIONS} more with new seeds`, (b) =>
        send(b, "/jobs", { ...requestOf(job), variations: VARIATIONS, source: "studio" })) : null,
      fromParams ? button("More like this", "more-like", "new images that start from this one", () => replace(panel, moreLike())) : null,
      ctx.config.upscaleModels && ctx.config.upscaleModels.length
        ? button("Upscale for print", "upscale", "this image, upscaled for print", () => replace(panel, upscale())) : null,
      ctx.config.projectRoot ? button("Save to a page", "save-to-page", "as a page's next version", () => { replace(panel, saveToPage()); }) : null,
      button("Workflow", "workflow", "the workflow that made it, to open in ComfyUI", (b) => openWorkflow(b)));
  }

  function close() { panel.replaceChildren(); }

  // img2img from this image: denoise 0.05 keeps nearly all of it, 1 ignores it.
  function moreLike() {
    const lim = ctx.config.limits.denoise || { min: 0.05, max: 1 };
    const denoise = h("input", { type: "range", name: "denoise", min: Math.max(lim.min, 0.05), max: lim.max, step: 0.05, value: 0.45 });
    const shown = h("output", {}, "0.45");
    denoise.addEventListener("input", () => { shown.textContent = Number(denoise.value).toFixed(2); });
    const go = h("button", { type: "button", class: "small primary", dataset: { action: "more-like-go" },
      onclick: () => { send(go, "/jobs", { ...requestOf(job), initJobId: job.id, denoise: Number(denoise.value), seed: Math.floor(Math.random() * SEED_MAX), source: "studio" }); close(); } }, "Make it");
    return h("div", { class: "panel" }, field("How much to redraw (denoise)", h("div", { class: "inline" }, denoise, shown),
      "low: close to this image · high: freer"), h("div", { class: "row" }, go, h("button", { type: "button", class: "small ghost", onclick: close }, "Close")));
  }

  function upscale() {
    const model = h("select", { name: "upscaleModel" }, ctx.config.upscaleModels.map((m) => h("option", { value: m }, m)));
    const go = h("button", { type: "button", class: "small primary", dataset: { action: "upscale-go" },
      onclick: () => { send(go, "/jobs", { initJobId: job.id, upscaleModel: model.value, source: "studio" }); close(); } }, "Upscale");
    return h("div", { class: "panel" }, field("Upscaler", model), h("div", { class: "row" }, go,
      h("button", { type: "button", class: "small ghost", onclick: close }, "Close")));
  }

  function saveToPage() {
    const chapter = h("select", { name: "chapter" });
    const page = h("select", { name: "page" });
    const go = h("button", { type: "button", class: "small primary", dataset: { action: "save-go" }, disabled: true }, "Save");
    const fillPages = () => {
      const c = projectPages.chapters.find((x) => String(x.chapter) === chapter.value);
      replace(page, (c ? c.pages : []).map((pg) => h("option", { value: pg.page }, `${pg.name} (${pg.versions.length} versions)`)));
      go.disabled = !page.value;
    };
    chapter.addEventListener("change", fillPages);
    go.addEventListener("click", async () => {
      go.disabled = true;
      try {
        const done = await api(`/project/pages/${chapter.value}/${page.value}/versions`, { method: "POST", body: { jobId: job.id } });
        projectPages = null; // its version counts changed
        toast(`saved as v${done.version} of ${done.page.name}`, "good");
        replace(panel, h("p", { class: "small" }, `Saved as v${done.version} of ${done.page.name}. `,
          h("a", { href: `#/pages/${chapter.value}/${page.value}/${done.version}` }, "Open it in Pages")));
      } catch (err) { go.disabled = false; toast(err, "error"); }
    });
    const box = h("div", { class: "panel" }, h("div", { class: "cols" }, field("Chapter", chapter), field("Page", page)),
      h("div", { class: "row" }, go, h("button", { type: "button", class: "small ghost", onclick: close }, "Close")));
    (projectPages ? Promise.resolve(projectPages) : api("/project")).then((project) => {
      projectPages = project;
      replace(chapter, project.chapters.filter((c) => c.pages.length).map((c) => h("option", { value: c.chapter }, `Chapter ${c.chapter}`)));
      fillPages();
    }).catch((err) => toast(err, "error"));
    return box;
  }

  // The graph as JSON in a tab of its own (a blob: the page's security policy allows those).
  async function openWorkflow(b) {
    const tab = window.open("", "_blank");
    try {
      const full = await api(`/jobs/${job.id}`);
      const url = URL.createObjectURL(new Blob([JSON.stringify(full.workflow, null, 2)], { type: "application/json" }));
      if (tab) tab.location = url; else window.location.assign(url);
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) { if (tab) tab.close(); toast(err, "error"); }
    b.blur();
  }

  return h("div", { class: "result-actions" }, h("div", { class: "row actions" }, buttons), panel);
}
