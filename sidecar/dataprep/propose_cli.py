"""`dataset caption DIR --auto`: choose the proposer, run it over the set, write the table once, and say
what was proposed, kept and left for the artist. The proposing itself is `proposals.py`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from sidecar.assist.ollama_client import OllamaAssistant
from sidecar.config import Settings
from sidecar.dataprep.proposals import OllamaProposer, ProposalRun, TaggerProposer, propose_table, write_proposals
from sidecar.dataprep.tagger import Wd14Tagger, find_taggers, taggers_dir, where_to_put
from sidecar.errors import TaggerInvalid


def pick_tagger(settings: Settings, name: str | None) -> Wd14Tagger:
    found = find_taggers(settings.models_path)
    if name is not None:
        chosen = next((t for t in found if t.name == name), None)
        if chosen is None:
            raise TaggerInvalid(f"No tagger {name!r} in {taggers_dir(settings.models_path)} (found: "
                                f"{', '.join(t.name for t in found) or 'none'}); {where_to_put(settings.models_path)}.",
                                {"tagger": name})
        return Wd14Tagger(chosen)
    if not found:
        raise TaggerInvalid(f"No caption tagger in {taggers_dir(settings.models_path)}: "
                            f"{where_to_put(settings.models_path)}, or use --proposer ollama.",
                            {"folder": str(taggers_dir(settings.models_path))})
    return Wd14Tagger(found[0])


async def _run(folder: Path, table: Path, trigger: str, flip_tag: str, kind: str, tagger_name: str | None,
               settings: Settings) -> ProposalRun:
    if kind == "tagger":
        tagger = await asyncio.to_thread(pick_tagger, settings, tagger_name)
        return await propose_table(folder, table, trigger, TaggerProposer(tagger), flip_tag)
    async with OllamaAssistant(settings.ollama_url, settings.ollama_timeout) as assistant:
        model = await assistant.model(settings.vision_model)
        await assistant.require_vision(model)
        return await propose_table(folder, table, trigger, OllamaProposer(assistant, model), flip_tag)


def propose(folder: Path, table: Path, trigger: str, flip_tag: str, proposer: str, tagger_name: str | None,
            settings: Settings) -> None:
    kind = proposer if proposer != "auto" else ("tagger" if find_taggers(settings.models_path) else "ollama")
    run = asyncio.run(_run(folder, table, trigger, flip_tag, kind, tagger_name, settings))
    if run.proposed:  # nothing new: the table stays byte for byte as the artist saved it
        write_proposals(table, run)
    for name, got in run.proposed.items():
        row = next(r for r in run.rows if r.file == name)
        click.echo(f"proposed {name}: {row.framing or '?'} | {row.pose or '?'} | {row.background or '?'}"
                   + (f"  ({', '.join(got.evidence)})" if got.evidence else ""))
    for name, parts in run.unfilled.items():
        click.echo(f"warning: {name}: no proposal for {', '.join(parts)}: fill it in", err=True)
    by = next(iter(run.proposed.values()), None)
    click.echo(f"{'wrote' if run.proposed else 'kept'} {table}: {len(run.proposed)} proposed"
               + (f" by {kind} " + (tagger_name or (find_taggers(settings.models_path)[0].name if kind == 'tagger'
                                                     else settings.vision_model)) if by else "")
               + (f", kept {len(run.kept)} confirmed" if run.kept else ""))
    if run.proposed:
        click.echo(f"check each proposed row, set its status to confirmed, then run "
                   f"`sidecar dataset caption {folder} --table {table}`")
