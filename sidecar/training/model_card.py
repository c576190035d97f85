"""The model card (`README.md`) of a publish bundle: what the LoRA is, its trigger word and the strength to
use it at, how to load it in ComfyUI, AUTOMATIC1111/Forge and this tool, its samples, how it was trained and
on what. Text from the bundle's own metadata only (no clock, no local path), so the card is as
reproducible as the rest of the bundle.
"""

from __future__ import annotations

from typing import Any


def _likeness(meta: dict[str, Any]) -> str:
    lk = meta.get("likeness")
    if not lk:
        return ""
    share = lk.get("shareSame")
    return (f"\n**Likeness** (the checkpoint sweep, against the character's reference images): mean score "
            f"{lk['meanScore']:.2f}" + (f", {share:.0%} judged the same character" if share is not None else "")
            + (f", ranked #{lk['rank']} of the run's checkpoints" if lk.get("rank") else "") + ".\n")


def model_card(meta: dict[str, Any], config: dict[str, Any], manifest: list[dict[str, Any]], with_dataset: bool) -> str:
    name, trigger, s = meta["name"], meta["trigger"], meta["recommendedStrength"]
    file = meta["file"]
    base = meta["baseModel"]
    p = config["params"]
    preset = f", preset `{meta['preset']}`" if meta.get("preset") else ""
    lines = [
        f"# {name}",
        "",
        f"A LoRA for {meta['familyName']} (`{meta['family']}`), trained with {meta['trainer']} for {meta['steps']} "
        f"steps{preset}; this is the checkpoint at step {meta['step']}.",
        "",
        f"- **Trigger word**: `{trigger}` (first in the prompt, as in every training caption)",
        f"- **Recommended strength**: {s:g}",
        f"- **Base model**: `{base['file']}`" + (f" (sha256 `{base['sha256']}`)" if base.get("sha256") else ""),
        f"- **File**: `{file}` (sha256 `{meta['sha256']}`)",
        _likeness(meta),
        "## How to use it",
        "",
        "**ComfyUI**: copy the file into `ComfyUI/models/loras/`; add a *Load LoRA* (`LoraLoader`) node between the "
        f"checkpoint loader and the sampler, choose `{file}`, set `strength_model` and `strength_clip` to {s:g}; "
        f"start the prompt with `{trigger}`.",
        "",
        f"**AUTOMATIC1111 / Forge**: copy the file into `models/Lora/` and write `{trigger}, ... <lora:{name}:{s:g}>` "
        "in the prompt.",
        "",
        f"**plasma-sidecar**: copy the file into the daemon's LoRA folder (or `sidecar loras promote RUN --step "
        f"{meta['step']}` on the machine that trained it), then `POST /jobs` with `\"loraId\": \"{name}\", "
        f"\"loraStrength\": {s:g}` and a prompt that starts with `{trigger}`.",
        "",
    ]
    if meta["samples"]:
        lines += ["## Samples", "", f"Rendered by the trainer at step {meta['step']}:", ""]
        for sample in meta["samples"]:
            caption = sample["prompt"] or sample["file"]
            lines += [f"![{caption}]({sample['file']})", "", f"*{caption}*", ""]
    lines += [
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {p[k]} |" for k in sorted(p) if p[k] is not None and k != "samplePrompts"],
        "",
        "The exact configuration is `training/config.json` (and the trainer's own config file beside it, when it "
        "has one).",
        "",
        "## Dataset",
        "",
        f"{len(manifest)} image(s); `dataset/manifest.json` lists each with its sha256 and caption"
        + (", and the images are in `dataset/images/`." if with_dataset else " (the images are not included)."),
        "",
    ]
    return "\n".join(lines)
