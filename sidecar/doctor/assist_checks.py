"""The doctor's lines for the assistants: does Ollama answer at `ollama_url`, has it pulled
`prompt_model` and `vision_model` (with the `ollama pull` line when not), is there a caption tagger
in `<models>/taggers/` (with where to put one), are the likeness judge's weights there (with the fetch
command) and does the project name a reference set. All optional: nothing else needs them."""

from __future__ import annotations

import asyncio

from sidecar.assist.ollama_client import OllamaAssistant, pull_fix
from sidecar.config import Settings
from sidecar.dataprep.tagger import find_taggers, where_to_put
from sidecar.doctor.report import Check
from sidecar.errors import SidecarError
from sidecar.likeness.ccip import CcipScorer
from sidecar.likeness.references import reference_files

PROBE_TIMEOUT = 3.0


async def _installed(settings: Settings) -> dict[str, str | None] | SidecarError:
    try:
        async with OllamaAssistant(settings.ollama_url, min(settings.ollama_timeout, PROBE_TIMEOUT)) as assistant:
            return await assistant.installed()
    except SidecarError as exc:
        return exc


def _has(models: dict[str, str | None], name: str) -> str | None:
    for candidate in (name, f"{name}:latest"):
        if candidate in models:
            return candidate
    return None


def check_assistants(settings: Settings) -> list[Check]:
    found = asyncio.run(_installed(settings))
    checks = []
    if isinstance(found, SidecarError):
        checks.append(Check("ollama", "warn", f"no answer at {settings.ollama_url} ({found.code})",
                            "optional, for `prompt refine` and `generate --refine`: install Ollama "
                            "(https://ollama.com) and start it, or set ollama_url"))
        checks += [Check(setting, "skip", f"{getattr(settings, setting)} (Ollama not reachable)")
                   for setting in ("prompt_model", "vision_model")]
    else:
        checks.append(Check("ollama", "ok", f"{settings.ollama_url}, {len(found)} model(s) pulled"))
        for setting in ("prompt_model", "vision_model"):
            name = getattr(settings, setting)
            have = _has(found, name)
            if have:
                checks.append(Check(setting, "ok", f"{name} ({(found[have] or '?')[:12]})"))
            else:
                checks.append(Check(setting, "warn", f"{name} is not pulled", pull_fix(name)))
    taggers = find_taggers(settings.models_path)
    if taggers:
        checks.append(Check("caption tagger", "ok", ", ".join(t.name for t in taggers)))
    else:
        checks.append(Check("caption tagger", "warn", "none (dataset caption --auto uses the vision model)",
                            f"optional: {where_to_put(settings.models_path)}"))
    return checks + check_likeness(settings)


def check_likeness(settings: Settings) -> list[Check]:
    try:
        scorer = CcipScorer.open(settings.models_path, settings.likeness_model)
        checks = [Check("likeness model", "ok", f"{scorer.name} (threshold {scorer.threshold:.3f}, weights "
                                                f"{scorer.weights})")]
    except SidecarError as exc:
        checks = [Check("likeness model", "warn", f"{settings.likeness_model} is not in {settings.models_path}",
                        exc.details.get("fix", "sidecar models fetch ccip"))]
    if settings.project_root is None:
        return checks + [Check("likeness references", "skip", "no project (project_root)")]
    try:
        refs = reference_files(settings.project_root)
        checks.append(Check("likeness references", "ok", f"{len(refs)} image(s) in {settings.project_root}"))
    except SidecarError as exc:
        checks.append(Check("likeness references", "warn", exc.message,
                            'references = ["refs/*.png"] in character.toml (crops of the character you approve)'))
    return checks
