// Pages: the pipeline project's chapters and pages; every version of a page in a strip, two versions
// side by side or as an overlay with a slider (to check the asymmetric details), approve one (the same
// log update as `generate approve`), render a new version with edited parameters, reproduce a version,
// open its workflow, refine its prompt through the local Ollama (refine.js). Keys: ← → through versions,
// a approve, n new version, r refine, c compare, o overlay.
import { api } from "../api.js";
import { field, h, picture, problem, replace, seconds, toast } from "../dom.js";
import { refineBox } from "./refine.js";

const SEED_MAX = 2 ** 32 - 1;

// Keys are the page's only while no control has them: a focused slider moves with the arrows, a select
// changes its choice, a field types (and a checkbox toggles with the space bar).
function typing(el) {
  return Boolean(el.closest && el.closest("input, textarea, select, [contenteditable]"));
}

export function mount(root, ctx, args) {
  const state = { project: null, chapter: null, page: null, version: null, compare: null, mode: "side", job: null };
  const nav = h("aside", { class: "page-list card", "aria-label": "chapters and pages" });
  const main = h("section", { class: "page-main" });
  root.append(h("h1", {}, "Pages"), h("div", { class: "pages-layout" }, nav, main));

  function currentPage() {
    const chapter = state.project?.chapters.find((c) => c.chapter === state.chapter);
    return chapter?.pages.find((p) => p.page === state.page) || null;
  }

  function go(chapter, page, version) {
    const hash = `#/pages/${chapter}/${page}${version ? `/${version}` : ""}`;
    if (location.hash !== hash) history.replaceState(history.state, "", hash);
    // Never one version compared with itself: showing the compared one swaps the two.
    const compare = state.page !== page ? null : state.compare === version ? state.version : state.compare;
    Object.assign(state, { chapter, page, version, compare: compare === version ? null : compare });
    render();
  }

  async function load() {
    try {
      state.project = await api("/project");
    } catch (err) {
      replace(nav);
      nav.hidden = true;
      replace(main, h("section", { class: "card notice" }, h("h2", {}, "No project"),
        err.code === "project_not_configured"
          ? h("p", {}, "The daemon has no project folder, so there are no pages to show. Name your comic's folder in the daemon's settings (",
            h("code", {}, "project_root"), ") and restart it; its chapters and pages then appear here.")
          : problem(err)));
      return;
    }
    const chapters = state.project.chapters;
    if (state.chapter === null) {
      const [c, p, v] = args.map(Number);
      const first = chapters.find((ch) => ch.pages.length);
      if (c && chapters.some((ch) => ch.chapter === c)) Object.assign(state, { chapter: c, page: p || null, version: v || null });
      else if (first) Object.assign(state, { chapter: first.chapter, page: first.pages[0].page });
    }
    render();
  }

  function render() {
    renderNav();
    renderPage();
  }

  function renderNav() {
    replace(nav, state.project.chapters.map((c) => h("div", { class: "chapter" },
      h("div", { class: "row" }, h("h3", {}, `Chapter ${c.chapter}`),
        h("button", { type: "button", class: "small", dataset: { action: "render-chapter", chapter: c.chapter },
          title: "render every page without an approved version", onclick: () => renderChapter(c.chapter) }, "Render unapproved")),
      c.logError ? h("p", { class: "error small" }, c.logError) : null,
      h("ul", {}, c.pages.map((p) => {
        const approved = p.versions.filter((v) => v.approved).map((v) => v.version);
        return h("li", {}, h("a", {
          href: `#/pages/${c.chapter}/${p.page}`, class: c.chapter === state.chapter && p.page === state.page ? "active" : "",
          onclick: (e) => { e.preventDefault(); go(c.chapter, p.page, null); },
        }, h("span", {}, p.name), h("span", { class: "muted small" },
          `${p.versions.length} v${approved.length ? ` · ✓ v${approved.at(-1)}` : ""}`)));
      })))));
  }

  // Every page of the chapter without an approved version, as page jobs (one group): each becomes a
  // version as its job succeeds, shown here by the job events below; progress per page is in Now.
  async function renderChapter(chapter) {
    try {
      const queued = await api(`/project/chapters/${chapter}/render`, { method: "POST", body: {} });
      const skipped = queued.skipped.length ? ` (${queued.skipped.length} approved page(s) left out)` : "";
      toast(queued.jobs.length ? `chapter ${chapter}: ${queued.jobs.length} page(s) queued${skipped}` : `chapter ${chapter}: every page has an approved version`, "good");
    } catch (err) { toast(err, "error"); }
  }

  function renderPage() {
    const page = currentPage();
    if (!page) {
      replace(main, h("p", { class: "muted" }, "This project has no pages yet: add prompts/ch-01/ch01_p001.txt."));
      return;
    }
    const versions = page.versions;
    if (!versions.some((v) => v.version === state.version)) state.version = versions.at(-1)?.version ?? null;
    const selected = versions.find((v) => v.version === state.version);
    if (state.compare === state.version || !versions.some((v) => v.version === state.compare)) state.compare = null;
    const other = versions.find((v) => v.version === state.compare);
    const strip = h("div", { class: "strip", role: "listbox", "aria-label": "versions" }, versions.map((v) => h("button", {
      type: "button", role: "option", class: `thumb${v.version === state.version ? " selected" : ""}${v.version === state.compare ? " compared" : ""}`,
      "aria-selected": String(v.version === state.version), dataset: { version: v.version },
      title: "click: show · shift-click: compare with the shown one",
      onclick: (e) => {
        if (e.shiftKey && v.version !== state.version) { state.compare = v.version; renderPage(); } else go(state.chapter, state.page, v.version);
      },
    }, picture(v.imageExists ? `${v.imageUrl}?size=256` : null, v.width, v.height, `version ${v.version}`),
    h("span", { class: "thumb-label" }, `v${v.version}`, v.approved ? h("span", { class: "approved-mark", title: "approved" }, " ✓") : null))));

    const viewer = h("div", { class: `viewer ${other ? state.mode : "single"}` });
    if (selected && other && state.mode === "overlay") viewer.append(overlay(selected, other));
    else {
      if (selected) viewer.append(figure(selected));
      if (other) viewer.append(figure(other));
    }
    const tools = h("div", { class: "row tools" },
      selected ? h("button", { type: "button", class: selected.approved ? "" : "primary", "aria-pressed": String(selected.approved),
        dataset: { action: "approve" }, onclick: () => approveVersion(selected), title: "a: approve, again: take it back" },
      selected.approved ? `v${selected.version} approved ✓ (undo)` : `Approve v${selected.version}`) : null,
      h("button", { type: "button", dataset: { action: "new" }, onclick: () => openForm(selected), title: "n" }, "New version"),
      page.promptFile ? h("button", { type: "button", dataset: { action: "refine" }, onclick: () => openRefine(selected), title: "r" }, "Refine") : null,
      selected && selected.workflowUrl ? h("button", { type: "button", dataset: { action: "reproduce" }, onclick: () => reproduce(selected) }, "Reproduce") : null,
      selected && selected.workflowUrl ? h("a", { class: "button", href: selected.workflowUrl, target: "_blank", rel: "noopener" }, "Workflow") : null,
      versions.length > 1 ? h("select", { "aria-label": "compare with", onchange: (e) => { state.compare = Number(e.target.value) || null; renderPage(); } },
        h("option", { value: "" }, "compare with…"),
        versions.filter((v) => v.version !== state.version).map((v) => h("option", { value: v.version, selected: v.version === state.compare }, `v${v.version}`))) : null,
      other ? h("div", { class: "segmented" },
        h("button", { type: "button", class: state.mode === "side" ? "on" : "", onclick: () => { state.mode = "side"; renderPage(); } }, "Side by side"),
        h("button", { type: "button", class: state.mode === "overlay" ? "on" : "", onclick: () => { state.mode = "overlay"; renderPage(); } }, "Overlay")) : null);

    // A form, refine box or render card open for this page survives a redraw (a version written meanwhile,
    // by this tab or another client); another page starts with an empty slot.
    const key = `${page.chapter}/${page.page}`;
    const previous = document.getElementById("job-slot");
    const slot = h("div", { id: "job-slot", dataset: { page: key } });
    if (previous && previous.dataset.page === key) slot.append(...previous.childNodes);
    replace(main,
      h("div", { class: "section-head" }, h("h2", {}, page.name),
        h("span", { class: "muted small" }, page.promptFile || "no prompt file")),
      versions.length ? strip : h("p", { class: "muted" }, "No versions yet: render one with New version."),
      tools,
      slot,
      viewer,
      selected ? details(selected) : null);
    fitViewer(viewer);
  }

  // The viewer fits the window below what stands above it (strip, tools): the images, and the overlay's
  // slider under them, are on screen without scrolling.
  function fitViewer(viewer) {
    const top = viewer.getBoundingClientRect().top + window.scrollY;
    viewer.style.setProperty("--viewer-top", `${Math.round(top)}px`);
  }

  function figure(v) {
    return h("figure", { class: "version" }, picture(v.imageExists ? v.imageUrl : null, v.width, v.height, `version ${v.version}`),
      h("figcaption", {}, `v${v.version}`, v.approved ? " · approved" : ""));
  }

  function overlay(a, b) {
    const top = picture(b.imageUrl, b.width, b.height, `version ${b.version}`, { class: "pic top" });
    const slider = h("input", { type: "range", min: 0, max: 100, value: 50, "aria-label": "overlay position",
      oninput: () => { top.style.clipPath = `inset(0 0 0 ${slider.value}%)`; } });
    top.style.clipPath = "inset(0 0 0 50%)";
    return h("figure", { class: "overlay" },
      h("div", { class: "stack" }, picture(a.imageUrl, a.width, a.height, `version ${a.version}`), top),
      slider, h("figcaption", {}, `left v${a.version} · right v${b.version}`));
  }

  function details(v) {
    const e = v.entry || {};
    const rows = [["seed", e.seed], ["steps", e.steps], ["cfg", e.cfg], ["sampler", e.sampler && `${e.sampler} / ${e.scheduler}`],
      e.loras && e.loras.length ? ["LoRAs", e.loras.map((l) => `${l.id} @ ${l.strength}`).join(", ")]
        : ["LoRA", e.loraId && `${e.loraId} @ ${e.loraStrength}`],
      ["ControlNet", e.controlnetStrength], ["model", e.model], ["family", e.family],
      ["size", v.width && `${v.width}×${v.height}`], ["engine", e.engine && `${e.engine} / ${e.device}`],
      ["took", e.durationMs && seconds(e.durationMs / 1000)], ["made", e.timestamp && new Date(e.timestamp).toLocaleString()],
      ["reproduces", e.reproducedFrom], ["job", e.jobId]].filter(([, value]) => value !== undefined && value !== null && value !== "");
    return h("dl", { class: "details card" }, rows.map(([k, value]) => [h("dt", {}, k), h("dd", {}, String(value))]),
      v.entry ? null : [h("dt", {}, "log"), h("dd", {}, "this image has no log entry")]);
  }

  // A toggle: approving another version takes the page's approval from the one before (the daemon
  // writes the log as `generate approve` / `generate unapprove` do, naming the studio as who changed it).
  async function approveVersion(v) {
    const verb = v.approved ? "unapprove" : "approve";
    try {
      const page = await api(`/project/pages/${state.chapter}/${state.page}/versions/${v.version}/${verb}?by=studio`, { method: "POST" });
      replacePage(page);
      toast(v.approved ? `v${v.version} no longer approved` : `v${v.version} approved`, "good");
    } catch (err) { toast(err, "error"); }
  }

  function replacePage(page) {
    const chapter = state.project.chapters.find((c) => c.chapter === page.chapter);
    chapter.pages = chapter.pages.map((p) => (p.page === page.page ? page : p));
    render();
  }

  function openForm(v) {
    const page = currentPage();
    const base = { ...(page.request || {}) };
    const e = (v && v.entry) || {};
    const prompt = h("textarea", { name: "prompt", rows: 3, required: true }, base.prompt || "");
    const seed = h("input", { type: "number", name: "seed", min: 0, max: SEED_MAX, value: e.seed ?? base.seed ?? Math.floor(Math.random() * SEED_MAX) });
    const steps = h("input", { type: "number", name: "steps", min: ctx.config.limits.steps.min, max: ctx.config.limits.steps.max, value: e.steps ?? base.steps ?? ctx.config.defaults.steps });
    const cfg = h("input", { type: "number", name: "cfg", step: 0.5, min: 0, max: ctx.config.limits.cfg.max, value: e.cfg ?? base.cfg ?? ctx.config.defaults.cfg });
    const strength = h("input", { type: "number", name: "loraStrength", step: 0.05, min: 0, max: 2, value: e.loraStrength ?? base.loraStrength ?? ctx.config.defaults.loraStrength });
    const form = h("form", { class: "card form new-version" },
      h("h3", {}, `New version of ${page.name}`),
      field("Prompt", prompt),
      h("div", { class: "cols" },
        field("Seed", h("div", { class: "inline" }, seed, h("button", { type: "button", class: "ghost", onclick: () => { seed.value = Math.floor(Math.random() * SEED_MAX); } }, "Random"))),
        field("Steps", steps), field("CFG", cfg), base.loraId ? field(`${base.loraId} strength`, strength) : null),
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Render"),
        h("button", { type: "button", class: "ghost", onclick: () => form.remove() }, "Close")));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const body = { ...base, prompt: prompt.value.trim(), seed: Number(seed.value), steps: Number(steps.value), cfg: Number(cfg.value) };
      if (base.loraId) body.loraStrength = Number(strength.value);
      form.remove();
      render_job(body, null);
    });
    replace(document.getElementById("job-slot"), form);
    prompt.focus();
  }

  function openRefine(v) {
    const box = refineBox({
      page: currentPage(), chapter: state.chapter, version: v,
      onRender: (body) => render_job(body, null),
      onWritten: (updated) => { replacePage(updated); document.getElementById("job-slot").append(box.element); },
    });
    replace(document.getElementById("job-slot"), box.element);
    box.focus();
  }

  async function reproduce(v) {
    try {
      const workflow = await api(v.workflowUrl);
      const body = { workflow };
      const pose = v.entry && v.entry.poseImage;
      if (pose) body.poseImagePath = pose.startsWith("/") ? pose : `${state.project.root}/${pose}`;
      render_job(body, v);
    } catch (err) { toast(err, "error"); }
  }

  // A render is a page job: the daemon writes the version when it succeeds, whether or not this tab is
  // still open (or on this view), and numbers versions in the order they finish.
  async function render_job(body, reproduces) {
    const slot = document.getElementById("job-slot");
    const target = { chapter: state.chapter, page: state.page };
    const page = { ...target };
    if (reproduces) {
      const e = reproduces.entry || {};
      page.reproducedFrom = e.workflowFile || `output/ch-${String(target.chapter).padStart(2, "0")}/raw/${currentPage().name}_v${reproduces.version}.workflow.json`;
      if (e.workflowTemplate) page.workflowTemplate = e.workflowTemplate;
    }
    let job;
    try {
      job = await api("/jobs", { method: "POST", body: { ...body, page, source: "studio" } });
    } catch (err) { toast(err, "error"); return; }
    state.job = { id: job.id, target };
    replace(slot, h("div", { class: "card rendering row", dataset: { jobId: job.id } },
      h("span", { class: "badge running" }, reproduces ? `reproducing v${reproduces.version}` : "rendering"),
      h("div", { class: "progress grow", role: "progressbar", "aria-label": "render progress" }, h("div", { class: "track" }, h("div", { class: "bar" })), h("span", { class: "small" }, "queued")),
      h("button", { type: "button", class: "small danger", onclick: () => api(`/jobs/${job.id}/cancel`, { method: "POST" }).catch((e) => toast(e, "error")) }, "Cancel")));
  }

  async function finished(job) {
    const mine = state.job && state.job.id === job.id;
    if (mine) state.job = null;
    // Only this job's own card is replaced: a form opened meanwhile stays.
    const card = () => document.querySelector(`#job-slot [data-job-id='${job.id}']`);
    if (job.status !== "succeeded") {
      if (mine && card()) replace(document.getElementById("job-slot"), job.error ? problem(job.error) : h("p", { class: "muted" }, `The render was ${job.status}.`));
      return;
    }
    const written = job.pageVersion;
    if (!written) return;
    try {
      state.project = await api("/project");
      if (card()) card().remove();
      if (mine) go(written.chapter, written.page, written.version);
      else render();
      toast(`ch${String(written.chapter).padStart(2, "0")} p${written.page}: v${written.version} written`, "good");
    } catch (err) { toast(err, "error"); }
  }

  const off = ctx.events.on((ev) => {
    if (!ev.job) return;
    if (state.job && ev.job.id === state.job.id) {
      const card = document.querySelector(`#job-slot [data-job-id='${ev.job.id}']`);
      if (card) {
        const { step, total } = ev.job.progress;
        card.querySelector(".bar").style.width = `${total ? (100 * step) / total : 0}%`;
        card.querySelector(".progress .small").textContent = total ? `${step}/${total}` : ev.job.status;
      }
    }
    // Any page job that ends (this tab's, another tab's, `generate`'s) shows its version here.
    if (["succeeded", "failed", "cancelled"].includes(ev.job.status) && (ev.job.page || (state.job && ev.job.id === state.job.id))) finished(ev.job);
  });

  function onKey(e) {
    if (typing(e.target) || e.metaKey || e.ctrlKey || e.altKey) return;
    const page = currentPage();
    if (!page) return;
    const i = page.versions.findIndex((v) => v.version === state.version);
    if (e.key === "ArrowRight" && i < page.versions.length - 1) go(state.chapter, state.page, page.versions[i + 1].version);
    else if (e.key === "ArrowLeft" && i > 0) go(state.chapter, state.page, page.versions[i - 1].version);
    else if (e.key === "a" && i >= 0) approveVersion(page.versions[i]);
    else if (e.key === "n") openForm(page.versions[i]);
    else if (e.key === "r" && page.promptFile) openRefine(page.versions[i]);
    else if (e.key === "o" && state.compare) { state.mode = state.mode === "overlay" ? "side" : "overlay"; renderPage(); }
    else if (e.key === "c" && page.versions.length > 1 && i >= 0) {
      state.compare = page.versions[i > 0 ? i - 1 : 1].version; renderPage();
    } else return;
    e.preventDefault();
  }
  document.addEventListener("keydown", onKey);
  load();
  return () => { off(); document.removeEventListener("keydown", onKey); };
}
