// A generation job as a card: its image (in a box of the job's aspect ratio), status, live progress,
// cancel, and the error of a failed job in plain words. Used by the Now and Generate views.
import { api } from "./api.js";
import { h, picture, problem, replace, seconds, timeAgo, toast } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);

// `actions(job)`: more buttons for a finished job (the Generate view's retry, variations, ...).
export function jobCard(job, actions = null) {
  const card = h("article", { class: "job card", dataset: { jobId: job.id } });
  card.actions = actions;
  updateJobCard(card, job);
  return card;
}

export function updateJobCard(card, job) {
  const p = job.params || {};
  const { step, total } = job.progress || { step: 0, total: 0 };
  const pct = total ? Math.round((100 * step) / total) : 0;
  // A step of a running job moves its bar only: redrawing the card at every step would pull its Cancel
  // button from under the pointer (a click on it never lands while the steps are fast).
  const shape = [job.status, job.backend, job.error && job.error.code, job.likeness && job.likeness.score,
    Boolean(job.output), Boolean(total)].join("|");
  if (card.shape === shape && ACTIVE.has(job.status) && moveProgress(card, step, total, pct)) return;
  card.shape = shape;
  const image = job.status === "succeeded" && job.output
    ? h("a", { href: job.output.url, target: "_blank", rel: "noopener", title: "open the image" },
      picture(`${job.output.url}?size=256`, p.width, p.height, p.prompt || "result"))
    : ACTIVE.has(job.status) && card.preview
      // The latest live preview (job.preview), until the image itself is there.
      ? picture(card.preview, p.width, p.height, "live preview", { class: "pic preview", title: "live preview" })
      : picture(null, p.width, p.height, "", { class: `pic empty ${job.status}` });
  const again = p.prompt && !ACTIVE.has(job.status) && !card.actions
    ? h("button", { class: "small ghost", type: "button", title: "open these parameters in Generate",
      onclick: () => { sessionStorage.setItem("studio.prefill", JSON.stringify({ ...p, where: job.where })); location.hash = "#/generate"; } }, "Edit & rerun")
    : null;
  const cancel = ACTIVE.has(job.status)
    ? h("button", { class: "small danger", type: "button", onclick: () => cancelJob(job.id) }, "Cancel")
    : null;
  card.dataset.status = job.status;
  replace(card,
    image,
    h("div", { class: "job-body" },
      h("div", { class: "row" },
        h("span", { class: `badge ${job.status}` }, job.status),
        h("span", { class: "muted small" }, timeAgo(job.createdAt)),
        job.likeness ? likenessBadge(job.likeness) : null,
        cancel, again),
      h("p", { class: "prompt", title: p.prompt || "" }, p.prompt || (p.upscaleModel ? `upscaled for print (${p.upscaleModel})` : "(a whole workflow)")),
      ACTIVE.has(job.status) || total
        ? h("div", { class: "progress", role: "progressbar", "aria-label": "progress", "aria-valuemin": 0, "aria-valuemax": total || 1,
          "aria-valuenow": step }, h("div", { class: "track" }, h("div", { class: "bar" })),
        h("span", { class: "small" }, total ? `${step}/${total}` : job.status))
        : null,
      job.error ? problem(job.error) : null,
      h("p", { class: "muted small meta" },
        [p.width && `${p.width}×${p.height}`, p.steps && `${p.steps} steps`, p.sampler, p.seed !== null && p.seed !== undefined && `seed ${p.seed}`,
          p.family && ({ sd15: "SD 1.5", sdxl: "SDXL", flux: "Flux" }[p.family] || p.family),
          p.loras && p.loras.length ? p.loras.map((l) => `${l.id} ${l.strength ?? ""}`).join(", ") : p.loraId && `${p.loraId} ${p.loraStrength ?? ""}`,
          job.durationMs && seconds(job.durationMs / 1000)]
          .filter(Boolean).join(" · ")),
      job.backend ? h("p", { class: "muted small backend", title: job.backendReason || "" }, `on ${job.backend}`) : null,
      card.actions && !ACTIVE.has(job.status) ? card.actions(job) : null));
  moveProgress(card, step, total, pct);
}

// The progress of a card drawn already: false when it has no bar to move.
function moveProgress(card, step, total, pct) {
  const bar = card.querySelector(".bar");
  if (!bar) return false;
  bar.style.width = `${pct}%`;
  const meter = card.querySelector(".progress");
  meter.setAttribute("aria-valuenow", step);
  meter.setAttribute("aria-valuemax", total || 1);
  const label = meter.querySelector(":scope > span");
  if (label && total) label.textContent = `${step}/${total}`;
  return true;
}

// The daemon's likeness judge on the image (project with references): score and verdict.
export function likenessBadge(lk) {
  const kind = { same: "succeeded", unsure: "queued", different: "failed" }[lk.verdict] || "";
  return h("span", { class: `badge likeness ${kind}`, title: `likeness ${lk.score} (${lk.scorer}, weights ${lk.weights})` },
    `${lk.verdict} ${lk.score.toFixed(2)}`);
}

// The judge's likeness comes with a job in full (GET /jobs/{id}), not in events or lists: asked once the
// job succeeded; `apply` gets the job only when it has one (a project with references and the weights).
export function withLikeness(job, apply) {
  if (job.status !== "succeeded" || job.likeness) return;
  api(`/jobs/${job.id}`).then((full) => { if (full.likeness) apply(full); }).catch(() => {});
}

// A job.preview event carries a small JPEG (base64): it shows in the card's picture box while the job runs.
function showPreview(card, ev) {
  if (!card || !ACTIVE.has(card.dataset.status)) return;
  card.preview = `data:${ev.mime || "image/jpeg"};base64,${ev.image}`;
  const box = card.querySelector(".pic");
  if (!box) return;
  let img = box.querySelector("img");
  if (!img) {
    img = h("img", { alt: "live preview", decoding: "async" });
    box.classList.remove("empty");
    box.classList.add("preview", "loaded");
    box.append(img);
  }
  img.src = card.preview;
}

async function cancelJob(id) {
  try {
    await api(`/jobs/${id}/cancel`, { method: "POST" });
  } catch (err) {
    toast(err, "error");
  }
}

// A live list of jobs: a first GET, then every job.* event updates or adds its card (no polling).
// `source`: only the jobs submitted with it (GET /jobs?source=, and the events' jobs filtered alike).
export function jobList(container, events, { limit = 30, filter = () => true, empty = "No jobs yet.", source = null,
  actions = null } = {}) {
  const cards = new Map();
  // "No jobs yet" only once the daemon said so: while it does not answer nothing is known.
  const placeholder = h("p", { class: "muted empty" }, "loading…");
  container.append(placeholder);

  function upsert(job, front = true) {
    if (!filter(job) || (source && job.source !== source)) return;
    let card = cards.get(job.id);
    if (card) updateJobCard(card, job);
    else {
      card = jobCard(job, actions);
      cards.set(job.id, card);
      if (front) container.prepend(card); else container.append(card);
    }
    placeholder.remove();
  }

  async function load() {
    const { jobs } = await api(`/jobs?limit=${limit}${source ? `&source=${encodeURIComponent(source)}` : ""}`);
    for (const job of jobs.slice().reverse()) upsert(job);
    placeholder.textContent = empty;
    if (!cards.size && !placeholder.isConnected) container.append(placeholder);
  }

  const off = events.on((ev) => {
    if (ev.type === "open") load().catch((err) => toast(err, "error"));
    else if (ev.type === "job.preview") showPreview(cards.get(ev.jobId), ev);
    else if (ev.type && ev.type.startsWith("job.") && ev.job) {
      upsert(ev.job);
      if (ev.type === "job.succeeded") withLikeness(ev.job, upsert);
    }
  });
  load().catch((err) => toast(err, "error"));
  return { off, upsert, cards };
}
