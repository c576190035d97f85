// The checkpoint picker Generate and Concept share: GET /models' checkpoints and Flux diffusion models,
// each with its family (read from the file) and, with several backends, where it runs. A current choice
// the daemon does not list stays shown as "(not installed)" so it is never dropped silently; `unset`
// adds a first option for "no choice here" (Concept: pipeline.toml's, then the daemon's checkpoint).
import { h, replace } from "../dom.js";
import { familyName } from "./stack.js";

export const allModels = (listed) => [...listed.checkpoints, ...listed.diffusionModels];

export function checkpointOptions(select, listed, current, { unset = null } = {}) {
  const all = allModels(listed);
  const several = all.some((m) => m.backends.some((b) => b !== "local"));
  const option = (m) => h("option", { value: m.name, selected: m.name === current, title: m.familyNote || "" },
    `${m.name} — ${familyName(m.family)}${!m.backends.length ? " (no backend runs it here)" : several ? ` · ${m.backends.join(", ")}` : ""}`);
  const known = !current || all.some((m) => m.name === current);
  replace(select, unset !== null ? h("option", { value: "", selected: !current }, unset) : null,
    known ? null : h("option", { value: current, selected: true }, `${current} (not installed)`),
    listed.checkpoints.length ? h("optgroup", { label: "Checkpoints" }, listed.checkpoints.map(option)) : null,
    listed.diffusionModels.length ? h("optgroup", { label: "Diffusion models (Flux)" }, listed.diffusionModels.map(option)) : null);
}

// The LoRA list for the stack: GET /models' LoRAs with GET /loras' trigger words.
export const withTriggers = (listed, loras) => {
  const words = new Map(loras.map((l) => [l.fileName, l.triggerWord]));
  return listed.loras.map((l) => ({ ...l, triggerWord: words.get(l.name) || null }));
};
