// Concept: a scene worked out in rounds before it becomes a page. Left: the concept's fields, each with
// a lock (a locked field goes into every prompt verbatim and the feedback never changes it), and the
// prompt composed from them as fields -> tags. Right: the latest round's four images, each picked or
// rejected with a word, the artist's words, and "send feedback" (the local model turns it into field
// changes; the next round renders them). Beside: the intent (what the rounds taught: preferences, notes).
// Without Ollama everything still works: the prompt is the fields as written, and the view says so.
// Under the fields, what the rounds render with (the concept's `[render]`): Generate's checkpoint picker
// and LoRA stack (GET /models' families, the profile's max_loras), saved with the fields.
import { api } from "../api.js";
import { field, h, picture, problem, replace, toast } from "../dom.js";
import { allModels, checkpointOptions, withTriggers } from "./checkpoint.js";
import { intentBox } from "./concept_intent.js";
import { familyName, loraStack } from "./stack.js";

const FIELDS = ["subject", "pose", "expression", "outfit", "background", "style", "mood", "lighting", "extra"];
const HINTS = { subject: "who or what: 1boy on a rooftop", background: "where: city rooftops at dusk",
  extra: "free tags, comma-separated", lighting: "dusk light, backlit", style: "manga, ink lines" };
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function ollamaNote(message) {
  return h("p", { class: "ollama-note small", role: "status", dataset: { notice: "ollama" } },
    "The local model (Ollama) is not available, so ", message,
    " Start Ollama (the Doctor view says how) to let it compose and read your feedback.");
}

const UNSET = "default (pipeline.toml's, else the daemon's)";

export function mount(root, ctx, args) {
  const cfg = ctx.config;
  let models = null; // {listed: GET /models, loras: its LoRAs with GET /loras' trigger words}
  const modelsReady = Promise.all([api("/models"), api("/loras").catch(() => ({ loras: [] }))])
    .then(([listed, { loras }]) => { models = { listed, loras: withTriggers(listed, loras) }; })
    .catch((err) => toast(err, "error"));
  let name = args[0] || null;
  let concept = null;
  let round = null; // {round, groupId, jobs}
  let timer = null;
  const picker = h("select", { name: "concept", "aria-label": "concept" });
  const newName = h("input", { name: "newName", placeholder: "rooftop-dusk", maxLength: 64, pattern: "[A-Za-z0-9][A-Za-z0-9_\\-]*",
    "aria-label": "new concept's name" });
  const create = h("form", { class: "row concept-new" }, newName,
    h("button", { type: "submit", dataset: { action: "new-concept" } }, "New concept"));
  const fieldsBox = h("form", { class: "card form concept-fields", "aria-label": "fields" });
  const composedBox = h("div", { class: "composed", "aria-live": "polite" });
  const roundBox = h("section", { class: "card concept-round", "aria-label": "round" });
  const intentHost = h("aside", { class: "card concept-intent", "aria-label": "intent" });
  const unreadable = h("ul", { class: "small unreadable-concepts", role: "status" });
  root.append(h("h1", {}, "Concept"),
    h("div", { class: "row wrap" }, field("Concept", picker), create), unreadable,
    h("div", { class: "concept-layout" }, h("div", {}, fieldsBox, composedBox), roundBox, intentHost));

  create.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!newName.value.trim()) return;
    try {
      const made = await api("/concepts", { method: "POST", body: { name: newName.value.trim() } });
      location.hash = `#/concept/${encodeURIComponent(made.name)}`;
    } catch (err) { toast(err, "error"); }
  });
  picker.addEventListener("change", () => { location.hash = `#/concept/${encodeURIComponent(picker.value)}`; });

  async function load() {
    let list;
    let listing;
    try { listing = await api("/concepts"); list = listing.concepts; } catch (err) { replace(fieldsBox, problemText(err)); return; }
    // A concept file edited by hand into something that no longer reads: named, with why; the others work.
    replace(unreadable, (listing.unreadable || []).map((u) =>
      h("li", { dataset: { concept: u.name } }, h("b", {}, u.name), ` cannot be read: ${u.message}`)));
    replace(picker, list.length ? null : h("option", { value: "" }, "no concept yet"),
      list.map((c) => h("option", { value: c.name, selected: c.name === name }, c.name)));
    if (!name && list.length) name = list[0].name;
    concept = list.find((c) => c.name === name) || null;
    if (!concept) {
      replace(fieldsBox, h("p", { class: "muted empty-concepts" }, "Name a new concept above to start: a scene or an idea in fields."));
      roundBox.replaceChildren();
      intentHost.replaceChildren();
      return;
    }
    drawFields();
    const intent = await api(`/concepts/${name}/intent`);
    const rounds = intent.intent.rounds;
    const last = rounds[rounds.length - 1];
    round = last ? { round: last.round, groupId: last.groupId, feedback: last.feedback, jobs: null } : null;
    drawIntent(intent);
    await refreshRound();
  }

  function drawFields() {
    const inputs = {};
    const locks = {};
    const rows = FIELDS.map((f) => {
      const value = f === "extra" ? concept.fields.extra.tags.join(", ") : concept.fields[f].value;
      inputs[f] = h("input", { name: f, value, maxLength: 300, placeholder: HINTS[f] || "", "aria-label": f });
      const locked = concept.fields[f].locked;
      locks[f] = h("button", { type: "button", class: `small lock${locked ? " on" : ""}`, "aria-pressed": String(locked),
        "aria-label": `lock ${f}`, title: "locked: verbatim in every prompt, never changed by feedback",
        dataset: { lock: f }, onclick: (e) => {
          const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
          e.currentTarget.setAttribute("aria-pressed", String(on));
          e.currentTarget.classList.toggle("on", on);
          e.currentTarget.textContent = on ? "locked" : "lock";
        } }, locked ? "locked" : "lock");
      return h("div", { class: "concept-field", dataset: { field: f } }, h("span", { class: "label small" }, f), inputs[f], locks[f]);
    });
    const who = concept.character;
    const render = renderBox();
    replace(fieldsBox, h("h2", {}, concept.name),
      h("p", { class: "small muted character" }, "always in, locked: ", h("b", {}, who.trigger),
        who.locked.length ? `, ${who.locked.join(", ")}` : ""),
      rows, render.element,
      h("div", { class: "row wrap" },
        h("button", { type: "button", dataset: { action: "compose" }, onclick: () => save().then(compose) }, "Compose"),
        h("button", { type: "submit", class: "primary", dataset: { action: "round" } }, round ? "Next round" : "Render 4")));
    fieldsBox.onsubmit = async (e) => {
      e.preventDefault();
      const wrong = render.problems();
      if (wrong.length) { toast(wrong.join("; "), "error"); return; }
      if (await save()) await startRound();
    };

    async function save() {
      const fields = {};
      for (const f of FIELDS) {
        const locked = locks[f].getAttribute("aria-pressed") === "true";
        fields[f] = f === "extra"
          ? { tags: inputs[f].value.split(",").map((t) => t.trim()).filter(Boolean), locked }
          : { value: inputs[f].value.trim(), locked };
      }
      try {
        concept = await api(`/concepts/${name}`, { method: "PUT", body: { fields, render: render.value() } });
        return true;
      } catch (err) { toast(err, "error"); return false; }
    }
  }

  // The rounds' checkpoint and LoRA stack. `loras` stays null (pipeline.toml's [generate] LoRAs) until the
  // artist sets a stack here; an emptied stack is [] (no LoRA). Kept in `concept.render` as it changes, so a
  // redraw (after feedback) shows what was chosen; saved with the fields (PUT) before a round.
  function renderBox() {
    const r = concept.render;
    const checkpoint = h("select", { name: "checkpoint", "aria-label": "checkpoint" },
      h("option", { value: r.checkpoint || "" }, r.checkpoint || UNSET));
    const pill = h("span", { class: "pill family", dataset: { family: "" } }, "family …");
    let touched = r.loras != null;
    const note = h("p", { class: "small muted stack-note" });
    const stack = loraStack({ limits: cfg.limits.loraStrength, defaultStrength: cfg.defaults.loraStrength,
      onChange: () => { touched = true; keep(); } });
    stack.set(r.loras || []);
    const value = () => ({ ...concept.render, checkpoint: checkpoint.value || null,
      loras: touched || stack.value().length ? stack.value() : null });
    function keep() { concept.render = value(); fit(); }
    function fit() {
      const chosen = checkpoint.value || cfg.defaults.checkpoint;
      const model = models && allModels(models.listed).find((m) => m.name === chosen);
      const family = model && model.family !== "unknown" ? model.family : null;
      stack.setFamily(family);
      const profiles = Object.values(cfg.profiles || {}).filter((p) => !family || (p.families || {})[family]);
      stack.setMost(Math.max(...(profiles.length ? profiles : [cfg.profile]).map((p) => p.maxLoras)));
      pill.dataset.family = model ? model.family : "";
      pill.textContent = model ? familyName(model.family) : "family …";
      note.textContent = value().loras === null ? "No stack set: the rounds use pipeline.toml's [generate] LoRAs." : "";
    }
    const fill = () => {
      if (!models) return;
      checkpointOptions(checkpoint, models.listed, concept.render.checkpoint || "", { unset: UNSET });
      stack.setLoras(models.loras);
      fit();
    };
    checkpoint.addEventListener("change", keep);
    if (models) fill(); else modelsReady.then(fill);
    fit();
    return {
      element: h("fieldset", { class: "concept-render" }, h("legend", { class: "label" }, "Render with"),
        field("Checkpoint", checkpoint, h("span", { class: "family-line" }, pill)), stack.element, note),
      value,
      problems: () => stack.problems(),
    };
  }

  function showComposed(c) {
    replace(composedBox, h("div", { class: "card" },
      h("h3", {}, `Prompt · ${c.style === "sentence" ? "sentences (Flux)" : "tags"}${c.composer === "ollama" ? ` · ${c.model}` : ""}`),
      c.composer === "fields" && c.message ? ollamaNote("the prompt is your fields as written.") : null,
      h("ul", { class: "fields-tags small" }, c.tags.map((t) =>
        h("li", { dataset: { source: t.source } }, h("span", { class: "muted" }, `${t.field} → `), t.tag))),
      c.refused.length ? h("details", { class: "small" }, h("summary", {}, `${c.refused.length} proposal(s) refused`),
        h("ul", { class: "refused" }, c.refused.map((r) => h("li", {}, `${r.field}: “${r.tag}” (${r.reason})`)))) : null));
  }

  async function compose() {
    replace(composedBox, h("p", { class: "muted small" }, "composing…"));
    try { showComposed(await api(`/concepts/${name}/compose`, { method: "POST", body: {} })); }
    catch (err) { replace(composedBox, problemText(err)); }
  }

  async function startRound() {
    const go = fieldsBox.querySelector("[data-action=round]");
    go.disabled = true;
    replace(composedBox, h("p", { class: "muted small" }, "composing and queueing four…"));
    try {
      const started = await api(`/concepts/${name}/rounds`, { method: "POST", body: {} });
      showComposed(started.composed);
      round = { round: started.round, groupId: started.groupId, jobs: started.jobs, feedback: null };
      drawRound();
      poll();
    } catch (err) { replace(composedBox, problemText(err)); }
    go.disabled = false;
  }

  async function refreshRound() {
    if (!round) { replace(roundBox, h("h2", {}, "Round"), h("p", { class: "muted" }, "No round yet: fill the fields, then Render 4.")); return; }
    try { round.jobs = (await api(`/groups/${round.groupId}`)).jobs; } catch { round.jobs = []; }
    drawRound();
    poll();
  }

  function poll() {
    clearTimeout(timer);
    if (!round || !round.jobs || round.jobs.every((j) => TERMINAL.has(j.status))) return;
    timer = setTimeout(refreshRound, 800);
  }

  // The artist's marks outlive the redraws while the round renders (the images arrive one by one).
  let marks = {}; // jobId -> {kind: "pick" | "reject" | "", reason}
  let said = { text: "", look: false, round: 0 };

  function drawRound() {
    if (said.round !== round.round) { marks = {}; said = { text: "", look: false, round: round.round }; }
    const cards = (round.jobs || []).map((j) => {
      const p = j.params || {};
      const m = marks[j.id] || (marks[j.id] = { kind: "", reason: "" });
      const reason = h("input", { name: "reason", placeholder: "why not (a word)", maxLength: 200, value: m.reason,
        "aria-label": `why not seed ${p.seed}`, oninput: (e) => { m.reason = e.currentTarget.value; } });
      const mark = (kind) => (e) => {
        const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
        for (const b of card.querySelectorAll("[data-mark]")) b.setAttribute("aria-pressed", "false");
        e.currentTarget.setAttribute("aria-pressed", String(on));
        m.kind = on ? kind : "";
        card.dataset.mark = m.kind;
      };
      const toggle = (kind, label) => h("button", { type: "button", class: "small", dataset: { mark: kind },
        "aria-pressed": String(m.kind === kind), onclick: mark(kind) }, label);
      const card = h("div", { class: "concept-image", dataset: { job: j.id, status: j.status, mark: m.kind } },
        picture(j.status === "succeeded" ? `/jobs/${j.id}/image?size=256` : null, p.width, p.height, `round ${round.round}, seed ${p.seed}`,
          { class: `pic ${j.status === "succeeded" ? "" : `empty ${j.status}`}` }),
        h("div", { class: "row small" }, h("span", { class: "muted" }, `seed ${p.seed}`), toggle("pick", "Pick"), toggle("reject", "Reject")),
        reason,
        j.status === "succeeded" ? pageForm(j) : null);
      return card;
    });
    const text = h("textarea", { name: "feedback", rows: 2, maxLength: 1000, placeholder: "calmer, more sky", "aria-label": "what else",
      oninput: (e) => { said.text = e.currentTarget.value; } }, said.text);
    const look = h("input", { type: "checkbox", name: "look", checked: said.look, onchange: (e) => { said.look = e.currentTarget.checked; } });
    const send = h("button", { type: "button", class: "primary", dataset: { action: "feedback" }, disabled: Boolean(round.feedback) }, "Send feedback");
    const out = h("div", { class: "feedback-out", "aria-live": "polite" });
    send.addEventListener("click", async () => {
      const body = { picks: [], rejects: [], text: text.value.trim(), look: look.checked };
      for (const j of round.jobs) {
        const m = marks[j.id] || {};
        if (m.kind === "pick") body.picks.push(j.id);
        if (m.kind === "reject") body.rejects.push({ jobId: j.id, reason: (m.reason || "").trim() });
      }
      if (!body.picks.length && !body.rejects.length && !body.text) { toast("Pick or reject an image, or say something.", "info"); return; }
      if (!body.picks.length) body.look = false;
      send.disabled = true;
      try {
        const answer = await api(`/concepts/${name}/rounds/${round.round}/feedback`, { method: "POST", body });
        round.feedback = answer;
        concept.fields = answer.fields;
        replace(out, answer.messages.length ? ollamaNote("your feedback is kept in the intent, but the fields were not changed: change them yourself.") : null,
          h("ul", { class: "changes small" }, answer.changes.map((c) => h("li", { dataset: { status: c.status } },
            `${c.status} · ${c.field}: “${c.new}”${c.note ? ` (${c.note})` : ""}`))));
        drawFields();
        drawIntent(await api(`/concepts/${name}/intent`));
      } catch (err) { send.disabled = false; replace(out, problemText(err)); }
    });
    replace(roundBox, h("h2", {}, `Round ${round.round}`), h("div", { class: "concept-images" }, cards),
      field("And", text), h("label", { class: "row small" }, look, "look at the first pick (“more like this”)"),
      h("div", { class: "row" }, send, round.feedback ? h("span", { class: "small muted" }, "feedback sent: render the next round") : null), out);
  }

  function pageForm(job) {
    const chapter = h("input", { type: "number", name: "chapter", min: 0, value: 1, "aria-label": "chapter", class: "narrow" });
    const page = h("input", { type: "number", name: "page", min: 0, value: 1, "aria-label": "page", class: "narrow" });
    const go = h("button", { type: "button", class: "small", dataset: { action: "make-page" } }, "Make page");
    go.addEventListener("click", async () => {
      try {
        const written = await api(`/concepts/${name}/page`, { method: "POST",
          body: { chapter: Number(chapter.value), page: Number(page.value), jobId: job.id } });
        toast(`${written.file} written: render it in Pages`, "good");
      } catch (err) { toast(err, "error"); }
    });
    return h("details", { class: "small make-page" }, h("summary", {}, "Make it a page"),
      h("div", { class: "row" }, h("span", {}, "ch."), chapter, h("span", {}, "p."), page, go));
  }

  function drawIntent(view) {
    replace(intentHost, intentBox(view, name, drawIntent));
  }

  function problemText(err) {
    const shown = problem(err);
    shown.setAttribute("role", "alert");
    return shown;
  }

  load();
  return () => clearTimeout(timer);
}
