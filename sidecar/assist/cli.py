"""`sidecar prompt refine`: a page's prompt refined from feedback through the local Ollama, the diff
shown, the file rewritten only with `--write` (its front matter kept). It talks to Ollama directly
(`ollama_url`), not to the daemon: no daemon needs to run.

Exit codes: 0 done (changed or not); 1 Ollama failed or timed out, or answered nonsense twice; 2 bad
input, a model not pulled (the message is the `ollama pull` line); 3 Ollama does not answer.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from sidecar.assist.service import RefineAsk, refine_ask
from sidecar.assist.wire import RefineAnswer
from sidecar.cli_support import settings_from, tool_group
from sidecar.config import Settings


def ollama_options(f):
    """`--config` and the settings an assistant reads (each with its description as help)."""
    for name in reversed(("ollama_url", "prompt_model", "vision_model", "ollama_timeout", "trigger_word")):
        field = Settings.model_fields[name]
        f = click.option("--" + name.replace("_", "-"), name, type=field.annotation, default=None,
                         help=f"{field.description} [default: {field.default}]")(f)
    return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                        help="TOML config file [default: $SIDECAR_CONFIG, else "
                             "~/.config/plasma-sidecar/config.toml]")(f)


@tool_group()
def prompt() -> None:
    """Page prompts: refine one from feedback through a local Ollama."""


@prompt.command()
@click.option("--prompt-file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="the page's prompt file (prompts/ch-01/ch01_p003.txt)")
@click.option("--feedback", required=True, help='what to change, in words: "look left, dusk, less cluttered"')
@click.option("--look", type=click.Path(path_type=Path, dir_okay=False),
              help="the picked image: the vision model looks at it first (vision_model)")
@click.option("--write", is_flag=True, help="rewrite the prompt file's text (front matter kept); otherwise diff only")
@click.option("--json", "as_json", is_flag=True, help="the whole answer as JSON")
@ollama_options
def refine(prompt_file: Path, feedback: str, look: Path | None, write: bool, as_json: bool, **flags: Any) -> None:
    """Refine a page prompt: the feedback becomes tag changes (prompt_model, through Ollama), applied so
    that the trigger word stays first and the locked traits of character.toml stay, unmirrored.

    \b
    Examples:
      sidecar prompt refine --prompt-file prompts/ch-01/ch01_p003.txt --feedback "look left, dusk"
      sidecar prompt refine --prompt-file prompts/ch-01/ch01_p003.txt --feedback "less cluttered" --write
      sidecar prompt refine --prompt-file ... --feedback "fix the hands" --look output/ch-01/raw/ch01_p003_v2.png
    """
    settings, _ = settings_from(flags)
    ask = RefineAsk(feedback=feedback, prompt_file=prompt_file.expanduser().resolve(),
                    look=look.expanduser().resolve() if look else None, write=write)
    answer = asyncio.run(refine_ask(ask, settings))
    if as_json:
        click.echo(json.dumps(answer.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False))
        return
    print_answer(answer)


def print_answer(answer: RefineAnswer, *, write_hint: bool = True) -> None:
    prov = answer.refined_from
    digest = (prov.model_digest or "?")[:12]
    click.echo(f"{prov.model} ({digest}): {answer.summary or 'no summary'}")
    for obs in answer.observations or []:
        click.echo(f"  saw: {obs}")
    for c in answer.changes:
        what = f"{c.op} {c.tag!r}" + (f" -> {c.replacement!r}" if c.replacement else "")
        click.echo(f"  {c.status:<9} {what}" + (f"  ({c.note})" if c.note else ""))
    for w in answer.warnings:
        click.echo(f"warning: {w}", err=True)
    if not answer.changed:
        click.echo("the prompt is unchanged")
        return
    click.echo(answer.file_diff.rstrip("\n") if answer.file_diff else "\n".join(answer.diff))
    if answer.written:
        click.echo(f"wrote {answer.prompt_file}")
    elif write_hint and answer.prompt_file:
        click.echo("not written: run again with --write to rewrite the prompt file")
