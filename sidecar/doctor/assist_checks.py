"""The doctor's lines for the assistants: does Ollama answer at `ollama_url`, has it pulled
`prompt_model` and `vision_model` (with the `ollama pull` line when not), and is there a caption tagger
in `<models>/taggers/` (with where to put one). All optional: nothing else needs them."""

from __future__ import annotations

import asyncio

from sidecar.assist.ollama_client import OllamaAssistant, pull_fix
from sidecar.config import Settings
from sidecar.dataprep.tagger import find_taggers, where_to_put
from sidecar.doctor.report import Check
from sidecar.errors import SidecarError

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
    return checks
