"""The `generate` command (also `python -m pipeline_stage`): options, page selection, output and exit codes.

`generate --comfyui -c 1 --page 1` renders; `generate approve|unapprove ...` (un)marks a version approved. The group
runs the generation itself when no subcommand is given, so the pipeline's existing call works as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline_stage.daemon import DEFAULT_URL
from pipeline_stage.drafts import DEFAULT_DRAFT_STEPS
from pipeline_stage.driftrun import consistency
from pipeline_stage.errors import InputError, StageError
from pipeline_stage.generate import generate
from pipeline_stage.genlog import set_approval, versions_in
from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import approve_version
from pipeline_stage.summary import emit_json, fail

EPILOG = """\b
Examples:
  generate --comfyui -c 1 --page 1            page 1 of chapter 1 -> output/ch-01/raw/ch01_p001_vN.png
  generate -c 1 --pages 1-4,7 --seed 42
  generate -c 1 --page 3 --repeat 3           3 versions, same seed, + a consistency report
  generate -c 1 --all --dry-run               print the requests, submit nothing
  generate -c 1 --page 3 --drafts 12 --draft-steps 8
                                              12 cheap drafts -> output/ch-01/drafts/ch01_p003/ + contact sheet
  generate -c 1 --page 3 --from-draft 7       draft 7's seed and parameters at full steps, as the next version
  generate -c 1 --page 3 --more-like 2 --denoise 0.45 [--variations 4]
                                              img2img from version 2 (4 at once): the next version(s)
  generate --reproduce output/ch-01/raw/ch01_p001_v1.workflow.json
  generate --where pool -c 1 --all            the chapter across the daemon's backends tagged pool
  generate -c 1 --page 3 --refine "look left, dusk"   refine through Ollama, show the diff, render it
  generate -c 1 --page 3 --refine "look left" --write   ... and make it the page's prompt
  generate -c 1 --page 3 --upscale 4x-UltraSharp.pth   also the print -> output/ch-01/print/ch01_p003_vN.png
  generate -c 1 --page 3 --version 2 --upscale 4x-UltraSharp.pth   print v2 as it is, no new render
  generate approve -c 1 --page 1 --version 2
  generate unapprove -c 1 --page 1 --version 2
  generate consistency -c 1                   each page's approved version vs the character: drift named

\b
Exit codes:
  0    done
  1    a job failed on the daemon (its error is shown); nothing written for it;
       --refine: Ollama timed out, failed or answered nonsense twice (nothing queued)
  2    usage or input error: bad option, prompt file missing (the path is named),
       bad front matter or pipeline.toml, or the daemon refused the request (400);
       --refine: the model is not pulled (the `ollama pull` line is shown)
  3    the daemon is not running (start it with `sidecar serve`); --refine: nor is Ollama
  4    the device is busy: LoRA training in progress (its step and ETA are shown)
  5    the generation log is torn or invalid (named; it is never overwritten)
  130  interrupted (Ctrl-C): a queued or running job is cancelled on the daemon
"""


@click.group(invoke_without_command=True, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--comfyui", is_flag=True,
              help="Generate with the local sidecar daemon (ComfyUI or its embedded engine). This is the only "
                   "mode of this command; the flag is accepted so the pipeline's `generate --comfyui` call works.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Project root holding pipeline.toml, prompts/ and output/.")
@click.option("-c", "--chapter", type=click.IntRange(min=0), help="Chapter number (ch-01 is 1).")
@click.option("--page", type=click.IntRange(min=0), help="One page number.")
@click.option("--pages", metavar="SPEC", help="Page numbers and ranges, e.g. 1-4,7.")
@click.option("--all", "all_pages", is_flag=True, help="Every prompt file of the chapter.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed (default: the prompt's, else a random one).")
@click.option("--lora", metavar="ID", help="LoRA id (file name without extension), as `sidecar loras` lists.")
@click.option("--no-lora", is_flag=True, help="No LoRA, even if the prompt or pipeline.toml names one.")
@click.option("--lora-strength", type=float, help="LoRA strength.")
@click.option("--steps", type=click.IntRange(min=1), help="Sampling steps.")
@click.option("--cfg", type=float, help="CFG scale.")
@click.option("--sampler", help="Sampler name, as ComfyUI names it (e.g. euler_ancestral).")
@click.option("--scheduler", help="Scheduler name (e.g. normal, karras).")
@click.option("--negative", help="Negative prompt.")
@click.option("--width", type=int, help="Width in pixels (<= the daemon's profile limit, multiple of 8).")
@click.option("--height", type=int, help="Height in pixels.")
@click.option("--checkpoint", help="Checkpoint file name (the log's `model`).")
@click.option("--pose", type=click.Path(dir_okay=False), help="Pose image for ControlNet (relative to here).")
@click.option("--controlnet-strength", type=float, help="ControlNet strength (0.4-0.9).")
@click.option("--denoise", type=float,
              help="With --more-like: how much of the version is redrawn (0.05 keeps nearly all of it, below 1).")
@click.option("--daemon", metavar="URL", envvar="SIDECAR_DAEMON_URL",
              help=f"The sidecar daemon (default: pipeline.toml's `daemon`, else {DEFAULT_URL}).")
@click.option("--token", metavar="TOKEN",
              help="The daemon's token, when it has one (default: SIDECAR_TOKEN, else `token` in the sidecar "
                   "config file, SIDECAR_CONFIG or ~/.config/plasma-sidecar/config.toml).")
@click.option("--repeat", type=int, default=1, show_default=True, metavar="K",
              help="K versions per page with the same parameters and seed, plus a consistency report "
                   "(contact sheet + similarity figures in output/ch-XX/consistency/).")
@click.option("--where", metavar="WHERE",
              help="Where the daemon runs the pages: local, any, a tag or a backend name of its [[backends]] "
                   "tables [default: the daemon's default_where]. Away from local, pages are submitted "
                   "together (--parallel) so every backend of the pool works.")
@click.option("--parallel", type=click.IntRange(min=1, max=512), metavar="N",
              help="Pages in flight at once [default: 1; 64 with --where other than local]. Versions are still "
                   "numbered under the log's lock; pages finish (and are logged) in any order.")
@click.option("--drafts", type=click.IntRange(1, 100), metavar="N",
              help="N cheap drafts of the page (seeds seed, seed+1, ...) into output/ch-XX/drafts/chXX_pNNN/ with "
                   "a contact sheet and index.json; never into raw/.")
@click.option("--draft-steps", type=click.IntRange(1, 150), metavar="S",
              help=f"Sampling steps of each draft (default {DEFAULT_DRAFT_STEPS}).")
@click.option("--draft-checkpoint", metavar="FILE",
              help="With --drafts: render the drafts with this checkpoint (a faster family, e.g. SD 1.5 on the laptop) "
                   "at its family's default size; --from-draft K then finishes draft K with the page's own "
                   "checkpoint by img2img from it (denoise 0.6, logged as draftOf + initImage).")
@click.option("--from-draft", type=click.IntRange(min=1), metavar="K",
              help="Render draft K's seed and parameters at full steps (--steps, else the page's) as the page's "
                   "next version (logged with draftOf).")
@click.option("--upscale", metavar="MODEL",
              help="Also make the page's print: the image upscaled by MODEL (a file of the daemon's "
                   "models/upscale_models/, e.g. 4x-UltraSharp.pth) into output/ch-XX/print/ under the version's "
                   "name (never raw/), logged as upscaleModel and printFile. With --reproduce too.")
@click.option("--version", "version", type=click.IntRange(min=1), metavar="N",
              help="With --upscale and --page: upscale that version as it was rendered (no new render) into "
                   "output/ch-XX/print/; its log entry gains upscaleModel and printFile.")
@click.option("--more-like", type=click.IntRange(min=1), metavar="V",
              help="img2img from version V of the page (its PNG in raw/ as the init image) with --denoise D "
                   "(0.05-1, how much is redrawn); the result is the page's next version, logged with initImage "
                   "and denoise.")
@click.option("--variations", type=click.IntRange(1, 100), metavar="N",
              help="N versions at once, seeds seed, seed+1, ... (one group on the daemon), each the page's next "
                   "version as it finishes; with --more-like, N variations of that version.")
@click.option("--dry-run", is_flag=True, help="Print the requests; submit and write nothing.")
@click.option("--reproduce", metavar="FILE.workflow.json", type=click.Path(dir_okay=False),
              help="Submit that exact workflow again as a new version of its page (recorded as reproducedFrom).")
@click.option("--refine", metavar="TEXT",
              help="Feedback in words (\"look left, dusk\"): each page's prompt is refined through the daemon's "
                   "Ollama first (trigger word and character.toml's locked traits kept), the diff shown, and the "
                   "page rendered with it; the log entry records refinedFrom.")
@click.option("--look", type=click.Path(dir_okay=False),
              help="With --refine: the picked image, which the vision model looks at first.")
@click.option("--write", is_flag=True,
              help="With --refine: write the refined prompt into the prompt file (front matter kept) once the "
                   "page is rendered.")
@click.option("--json", "json_out", is_flag=True, help="A machine-readable summary on stdout; no progress bar.")
@click.pass_context
def main(ctx: click.Context, **opts: Any) -> None:
    """Generate manga page images through the local sidecar daemon.

    Reads prompts/ch-XX/chXX_pNNN.txt (prompt text, optionally after a +++ TOML front matter block),
    submits the page to the daemon, shows progress, and writes output/ch-XX/raw/chXX_pNNN_vN.png (a new
    version N every run, never overwriting), chXX_pNNN_vN.workflow.json beside it, and an entry in
    output/ch-XX/generation-log.json. Command-line options override the front matter, which overrides
    the [generate] table of pipeline.toml.
    """
    if ctx.invoked_subcommand is not None:
        return
    ctx.exit(generate(opts))


def _approval_options(verb: str) -> Any:
    def wrap(f: Any) -> Any:
        for option in reversed([
            click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
                         show_default=True, help="Project root."),
            click.option("-c", "--chapter", type=click.IntRange(min=0), required=True, help="Chapter number."),
            click.option("--page", type=click.IntRange(min=0), required=True, help="Page number."),
            click.option("--version", "version", type=click.IntRange(min=1), required=True, help=f"Version to {verb}."),
            click.option("--json", "json_out", is_flag=True, help=f"Print the {verb}d entry as JSON."),
        ]):
            f = option(f)
        return click.pass_context(f)
    return wrap


@main.command()
@_approval_options("approve")
def approve(ctx: click.Context, root: Path, chapter: int, page: int, version: int, json_out: bool) -> None:
    """Mark version N of a page approved in the chapter's generation log (any other version of the page
    is no longer approved: a page has one pick).

    \b
    Example:
      generate approve -c 1 --page 1 --version 2
    """
    _set_approval(ctx, root, Page(chapter, page), version, True, json_out)


@main.command()
@_approval_options("unapprove")
def unapprove(ctx: click.Context, root: Path, chapter: int, page: int, version: int, json_out: bool) -> None:
    """Take back the approval of version N of a page in the chapter's generation log.

    \b
    Example:
      generate unapprove -c 1 --page 1 --version 2
    """
    _set_approval(ctx, root, Page(chapter, page), version, False, json_out)


def _set_approval(ctx: click.Context, root: Path, target: Page, version: int, approved: bool, json_out: bool) -> None:
    project = Project(root.expanduser().resolve())
    log_path = project.log_file(target.chapter)

    def mark(log: Any) -> dict[str, Any]:
        try:
            return set_approval(log, target, version, approved, "generate")
        except LookupError:
            known = sorted(set(versions_in(log, target)))
            raise InputError(
                f"{log_path} has no entry for {target.image_name(version)}"
                + (f" (versions logged for {target}: {', '.join(map(str, known))})." if known else "."),
                {"file": str(log_path), "versions": known},
            ) from None

    try:
        if not log_path.is_file():
            raise InputError(f"No generation log at {log_path}: nothing generated for chapter {target.chapter} yet.",
                             {"file": str(log_path)})
        entry = approve_version(project, target, version, mark)
    except StageError as exc:
        ctx.exit(fail(exc, json_out))
    if json_out:
        emit_json({"ok": True, "entry": entry, "log": project.relative(log_path)})
    else:
        click.echo(f"{'approved' if approved else 'unapproved'} {target} v{version} ({entry.get('imageFile')}) in "
                   f"{project.relative(log_path)}")


main.add_command(consistency)
