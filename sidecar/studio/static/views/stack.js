// Generate's LoRA stack: up to the profile's `max_loras` rows, each a LoRA picker and a strength slider
// with its number, sent as `loras: [{id, strength}]` in the order shown (the daemon chains one loader per
// row in that order). Only LoRAs of the chosen checkpoint's family can be picked: the others stay in the
// list, disabled, saying which family they are for (the daemon would refuse them: lora_family_mismatch).
// A LoRA whose family could not be read (a file only a remote backend has) stays pickable, marked so.
import { h, replace } from "../dom.js";

const FAMILY = { sd15: "SD 1.5", sdxl: "SDXL", flux: "Flux", unknown: "unknown family" };
export const familyName = (f) => FAMILY[f || "unknown"] || f;
export const loraId = (name) => name.replace(/\.(safetensors|ckpt|pt|bin|pth)$/i, "");

export function loraStack({ limits, defaultStrength, onChange }) {
  let loras = []; // GET /models' loras: {name, family, familyNote, ...} (+ triggerWord from GET /loras)
  let family = null; // the chosen checkpoint's family (null: not known yet)
  let most = 3;
  const rows = h("ol", { class: "lora-rows" });
  const add = h("button", { type: "button", class: "small", dataset: { action: "add-lora" } }, "Add LoRA");
  const count = h("span", { class: "muted small lora-count", "aria-live": "polite" });
  const box = h("fieldset", { class: "lora-stack" },
    h("legend", { class: "label" }, "LoRAs"), rows, h("div", { class: "row" }, add, count));

  function usable(l) {
    return !family || l.family === "unknown" || l.family === family;
  }

  function optionsFor(select, current) {
    const taken = new Set([...rows.querySelectorAll("select")].filter((s) => s !== select).map((s) => s.value));
    const names = loras.map((l) => loraId(l.name));
    // A kept or copied LoRA the daemon does not list (yet): still shown, so it is not lost silently.
    const extra = current && !names.includes(current) ? [h("option", { value: current, selected: true }, `${current} (not installed)`)] : [];
    replace(select, h("option", { value: "" }, "choose a LoRA"), extra, loras.map((l) => {
      const id = loraId(l.name);
      const why = !usable(l) ? ` — ${familyName(l.family)}, not for this ${familyName(family)} checkpoint`
        : l.family === "unknown" ? " — family unknown" : "";
      return h("option", { value: id, selected: id === current, disabled: !usable(l) || taken.has(id),
        title: l.familyNote || "" }, `${id}${l.triggerWord ? ` (${l.triggerWord})` : ""}${why}`);
    }));
  }

  function row(id = "", strength = defaultStrength) {
    const n = rows.children.length;
    const select = h("select", { name: `loras[${n}].id`, "aria-label": `LoRA ${n + 1}` });
    const slider = h("input", { type: "range", min: limits.min, max: limits.max, step: 0.05, value: strength,
      "aria-label": `LoRA ${n + 1} strength` });
    const number = h("input", { type: "number", name: `loras[${n}].strength`, min: limits.min, max: limits.max, step: 0.05,
      value: strength, inputmode: "decimal", required: true, "aria-label": `LoRA ${n + 1} strength value` });
    slider.addEventListener("input", () => { number.value = slider.value; onChange(); });
    number.addEventListener("input", () => { if (number.checkValidity()) slider.value = number.value; });
    const remove = h("button", { type: "button", class: "small ghost", dataset: { action: "remove-lora" },
      "aria-label": `remove LoRA ${n + 1}`, onclick: () => { item.remove(); renumber(); onChange(); } }, "Remove");
    select.addEventListener("change", () => { refresh(); onChange(); });
    const item = h("li", { class: "lora-row" }, select, h("div", { class: "strength" }, slider, number), remove);
    rows.append(item);
    optionsFor(select, id);
    return item;
  }

  // After a removal: names and labels follow the rows' order (the stack's order is the wire's).
  function renumber() {
    [...rows.children].forEach((item, i) => {
      const [select, slider, number, remove] = item.querySelectorAll("select, input[type=range], input[type=number], button");
      select.name = `loras[${i}].id`; select.setAttribute("aria-label", `LoRA ${i + 1}`);
      slider.setAttribute("aria-label", `LoRA ${i + 1} strength`);
      number.name = `loras[${i}].strength`; number.setAttribute("aria-label", `LoRA ${i + 1} strength value`);
      remove.setAttribute("aria-label", `remove LoRA ${i + 1}`);
    });
    refresh();
  }

  // Options (families, the ones other rows took) and the Add button after any change.
  function refresh() {
    for (const select of rows.querySelectorAll("select")) optionsFor(select, select.value);
    const n = rows.children.length;
    add.disabled = n >= most;
    count.textContent = n >= most ? `${n} of ${most}: the most a job may stack here` : `${n} of up to ${most}`;
  }

  add.addEventListener("click", () => { row(); refresh(); rows.lastElementChild.querySelector("select").focus(); onChange(); });

  return {
    element: box,
    // The stack as POST /jobs takes it (rows without a LoRA left out).
    value: () => [...rows.children].map((item) => ({
      id: item.querySelector("select").value, strength: Number(item.querySelector("input[type=number]").value),
    })).filter((l) => l.id),
    set(stack) { rows.replaceChildren(); for (const l of stack) row(l.id, l.strength ?? defaultStrength); refresh(); },
    setLoras(list) { loras = list; refresh(); },
    setFamily(f) { family = f; refresh(); },
    setMost(n) { most = n; refresh(); },
    // What the form must refuse before submit: too many rows, a LoRA of another family.
    problems() {
      const out = [];
      const stack = this.value();
      if (stack.length > most) out.push(`${stack.length} LoRAs: at most ${most} here`);
      for (const l of stack) {
        const known = loras.find((x) => loraId(x.name) === l.id);
        if (known && !usable(known)) out.push(`${l.id} is a ${familyName(known.family)} LoRA; the checkpoint is ${familyName(family)}`);
      }
      return out;
    },
  };
}
