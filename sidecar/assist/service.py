"""One refinement as a command or a route asks for it: read the prompt (text or page file), find the
character, check the image to look at, ask Ollama, apply, and write the file only when asked and only
after everything else succeeded. Any failure before the write leaves every file as it was.

Blocking file work runs in a thread: the daemon's route calls this on its event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sidecar.assist.character import CharacterSheet, find_character, load_character
from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.assist.promptfile import PromptFile, file_diff, read_prompt_file, rewrite
from sidecar.assist.refine import refine
from sidecar.assist.wire import ChangeOutcome, CharacterInfo, RefineAnswer
from sidecar.config import Settings
from sidecar.errors import InvalidField
from sidecar.userfiles import check_image


@dataclass(frozen=True)
class RefineAsk:
    feedback: str
    prompt: str | None = None
    prompt_file: Path | None = None
    look: Path | None = None
    write: bool = False
    look_field: str = "--look"  # how the caller names the image in an error (lookImagePath on the API)


@dataclass(frozen=True)
class Character:
    sheet: CharacterSheet
    file: Path | None


def character_for(start: Path | None, settings: Settings) -> Character:
    """The nearest character.toml from `start` upwards; without one, the configured trigger word alone."""
    found = find_character(start) if start is not None else None
    if found is not None:
        return Character(load_character(found), found)
    return Character(CharacterSheet(trigger=settings.trigger_word), None)


def _prepare(ask: RefineAsk, settings: Settings) -> tuple[PromptFile | None, str, Character, bytes | None]:
    page = read_prompt_file(ask.prompt_file) if ask.prompt_file is not None else None
    text = ask.prompt if ask.prompt is not None else page.text if page is not None else None
    if text is None or not text.strip():
        raise InvalidField("Give a prompt or a prompt file to refine.", {"field": "prompt"})
    if ask.write and page is None:
        raise InvalidField("write needs a prompt file to rewrite.", {"field": "write"})
    character = character_for(ask.prompt_file, settings)
    look = check_image(str(ask.look), ask.look_field).path.read_bytes() if ask.look is not None else None
    return page, text.strip(), character, look


async def refine_ask(ask: RefineAsk, settings: Settings) -> RefineAnswer:
    page, text, character, look = await asyncio.to_thread(_prepare, ask, settings)
    async with OllamaAssistant(settings.ollama_url, settings.ollama_timeout) as assistant:
        result = await refine(assistant, prompt=text, feedback=ask.feedback, sheet=character.sheet,
                              prompt_model=settings.prompt_model, vision_model=settings.vision_model,
                              look_image=ask.look, look_bytes=look)
    warnings = list(result.applied.warnings)
    if character.file is None:
        warnings.append(f"no {('character.toml')} found from the prompt file's folder upwards: only the trigger "
                        f"word {character.sheet.trigger!r} (trigger_word) is protected")
    written, diff = False, None
    if page is not None and result.changed:
        new_content = page.with_text(result.refined)
        diff = file_diff(page, new_content)
        if ask.write:
            await asyncio.to_thread(rewrite, page, result.refined)
            written = True
    sheet = character.sheet
    return RefineAnswer(
        original=result.original, refined=result.refined, changed=result.changed,
        summary=result.change_set.summary,
        changes=[ChangeOutcome(op=o.change.op, region=o.change.region, tag=o.change.tag,
                               replacement=o.change.replacement, reason=o.change.reason, status=o.status,
                               note=o.note) for o in result.applied.outcomes],
        diff=result.diff, observations=result.notes.observations if result.notes else None, warnings=warnings,
        character=CharacterInfo(file=str(character.file) if character.file else None, trigger=sheet.trigger,
                                locked=sheet.locked, locked_negative=sheet.locked_negative),
        prompt_file=str(ask.prompt_file) if ask.prompt_file else None, written=written, file_diff=diff,
        refined_from=result.refined_from)
