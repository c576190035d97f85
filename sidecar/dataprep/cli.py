"""`sidecar dataset ...`: the click commands over the dataset modules (crop, flip, caption, check,
layout, reg). They parse options, print what happened and map errors to exit codes; the work and the
validation live in the modules, which check every input before any file is written.

Exit codes: 0 ok; 1 check found errors / a reg job failed; 2 bad input or usage (nothing was changed);
3 the daemon does not answer; 4 the device is busy training.

Why one module of over 400 lines: it is one click command per `sidecar dataset` subcommand, each a thin
shell over its library module (crop, flip, caption, check, layout, reg); their options are most of it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from sidecar.cli_support import current_settings as _settings
from sidecar.cli_support import tool_group, url_option
from sidecar.client import DaemonClient
from sidecar.dataprep import caption as caption_mod
from sidecar.dataprep import check as check_mod
from sidecar.dataprep.gate import gate_options
from sidecar.dataprep import crop as crop_mod
from sidecar.dataprep import flip as flip_mod
from sidecar.dataprep import layout as layout_mod
from sidecar.dataprep import reg as reg_mod
from sidecar.dataprep.files import DEFAULT_FLIP_TAG, refuse_existing
from sidecar.dataprep.progress import LineReporter, RichReporter
from sidecar.device import busy_message
from sidecar.errors import EXIT_FAILED, DatasetInvalid, TrainingInProgress


def _trigger(value: str | None) -> str:
    return value if value else _settings().trigger_word


trigger_option = click.option("--trigger", default=None, metavar="WORD",
                              help="the character's trigger word [default: the configured trigger_word]")
flip_tag_option = click.option("--flip-tag", default=DEFAULT_FLIP_TAG, show_default=True,
                               help="tag that marks a flipped image's caption ('' for none)")


@tool_group()
def dataset() -> None:
    """Turn a reference sheet into a captioned kohya training set.

    \b
    A typical run (see docs/training/walkthrough.md):
      sidecar dataset crop Spyke_Final.png --auto --regions sheet.toml      # find figures, edit sheet.toml
      sidecar dataset crop Spyke_Final.png --regions sheet.toml --out set/ --size 512 --fit pad
      sidecar dataset caption set/ --init                                    # fill in set/captions.csv
      sidecar dataset caption set/ --table set/captions.csv
      sidecar dataset flip set/ --only 'front*'
      sidecar dataset check set/
      sidecar dataset reg --count 150 --prompt "anime character, full body" --out reg/
      sidecar dataset layout set/ --repeats 10 --class "anime character" --reg reg/ --out train/

    Exit codes: 0 ok, 1 check errors or a failed render, 2 bad input (nothing changed),
    3 daemon not running, 4 device busy training.
    """


# -- crop -----------------------------------------------------------------------------------------

@dataset.command()
@click.argument("sheet", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--regions", "regions_path", type=click.Path(path_type=Path, dir_okay=False),
              help="regions TOML: read it, or with --auto write it [default with --auto: SHEET.regions.toml]")
@click.option("--auto", is_flag=True, help="find the figures on the sheet's plain background and write --regions")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="folder for the crops (<name>.png)")
@click.option("--size", default=512, show_default=True, type=click.IntRange(min=0),
              help="square side of each crop in pixels; 0 keeps the crops as cut")
@click.option("--fit", type=click.Choice(["pad", "crop"]), default="pad", show_default=True,
              help="pad: whole figure on a background square; crop: fill the square, cut the edges")
@click.option("--background", default=None, metavar="#RRGGBB",
              help="pad colour [default: the regions file's, else the sheet's border colour]")
@click.option("--tolerance", default=24, show_default=True, type=click.IntRange(1, 255),
              help="--auto: how far from the background colour a pixel is part of a figure")
@click.option("--overwrite", is_flag=True, help="replace an existing regions file or crops")
def crop(sheet: Path, regions_path: Path | None, auto: bool, out: Path | None, size: int, fit: str,
         background: str | None, tolerance: int, overwrite: bool) -> None:
    """Cut named regions out of a reference SHEET into square training images.

    \b
    Examples:
      sidecar dataset crop Spyke_Final.png --auto                       # writes Spyke_Final.regions.toml
      sidecar dataset crop Spyke_Final.png --regions Spyke_Final.regions.toml --out set/ --fit pad
    """
    if not auto and (regions_path is None or out is None):
        raise click.UsageError("give --regions FILE and --out DIR (or --auto to find the figures first)")
    image = crop_mod.read_sheet(sheet)
    if auto:
        regions_path = regions_path or sheet.with_name(f"{sheet.stem}.regions.toml")
        found = crop_mod.detect_regions(image, _slug(sheet.stem), tolerance=tolerance)
        if not found.regions:
            raise DatasetInvalid(
                f"No figures found on {sheet}: the whole sheet is its background colour "
                f"{crop_mod.to_hex(found.background)} within --tolerance {tolerance}.", {"file": str(sheet)})
        if not overwrite:
            refuse_existing([regions_path], "pass --overwrite to replace it (your edits would be lost).")
        regions, bg = found.regions, found.background
    else:
        assert regions_path is not None
        parsed = crop_mod.load_regions(regions_path, image.size)
        if parsed.sheet and parsed.sheet != sheet.name:
            click.echo(f"warning: {regions_path} was written for {parsed.sheet}, not {sheet.name}", err=True)
        regions = parsed.region
        bg = crop_mod.parse_hex(parsed.background) if parsed.background else crop_mod.border_colour(image)
    if background:
        bg = crop_mod.parse_hex(background)
    plans = []
    if out is not None:
        if out.exists() and not out.is_dir():
            raise DatasetInvalid(f"{out} is a file; --out must be a folder.", {"file": str(out)})
        plans = crop_mod.plan_crops(image, regions, out, size=size, fit=fit, background=bg)  # type: ignore[arg-type]
        if not overwrite:
            refuse_existing([p.target for p in plans], "pass --overwrite to replace them.")
    if auto:
        crop_mod.write_regions(regions_path, regions, sheet, bg)
        click.echo(f"found {len(regions)} figure(s) on {sheet.name} (background {crop_mod.to_hex(bg)}"
                   + (f", {found.dropped} small mark(s) ignored" if found.dropped else "") + ")")
        for r in regions:
            click.echo(f"  {r.name}: x={r.x} y={r.y} {r.width}x{r.height}")
        click.echo(f"wrote {regions_path}: adjust it, then run "
                   f"`sidecar dataset crop {sheet} --regions {regions_path} --out DIR`")
    crop_mod.write_crops(plans)
    for p in plans:
        click.echo(f"wrote {p.target} ({p.image.width}x{p.image.height})")
        for w in p.warnings:
            click.echo(f"warning: {w}", err=True)


def _slug(stem: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "_" for c in stem).strip("_")
    return out or "sheet"


# -- flip -----------------------------------------------------------------------------------------

@dataset.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--tag", default=DEFAULT_FLIP_TAG, show_default=True,
              help="added as the last part of each flipped caption ('' for none)")
@click.option("--only", multiple=True, metavar="PATTERN",
              help="flip only images matching this glob (repeatable), e.g. views where asymmetric details do not show")
def flip(folder: Path, tag: str, only: tuple[str, ...]) -> None:
    """Add horizontal flips (NAME_flip.png) with their captions plus the --tag.

    A flip swaps left and right: an asymmetric character (right bracer, left knee pauldron) gets its
    details on the wrong side. The tag lets prompts steer away from it; `check` warns when flips are
    too large a share of the set.

    \b
    Examples:
      sidecar dataset flip set/
      sidecar dataset flip set/ --only 'back*' --only 'side_*'
    """
    result = flip_mod.plan_flips(folder, tag, only)
    flip_mod.write_flips(result.planned)
    for p in result.planned:
        click.echo(f"wrote {p.target.name}" + (f"  ({p.caption})" if p.caption else "  (no caption: source has none)"))
    if result.skipped_existing:
        click.echo(f"kept {len(result.skipped_existing)} existing flip(s)")
    if result.uncaptioned:
        click.echo(f"warning: {len(result.uncaptioned)} source(s) have no caption yet; `caption DIR --table ...` "
                   "captions their flips too", err=True)
    if not result.planned and not result.skipped_existing:
        click.echo("nothing to flip" + (f" matching {', '.join(only)}" if only else ""))


# -- caption --------------------------------------------------------------------------------------

@dataset.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--init", "init", is_flag=True, help="write the table with one row per image to fill in")
@click.option("--auto", is_flag=True,
              help="propose framing, pose and background into the table for every row not confirmed "
                   "(status proposed); confirmed rows are never touched")
@click.option("--proposer", type=click.Choice(["auto", "tagger", "ollama"]), default="auto", show_default=True,
              help="--auto: a WD14 tagger from <models_dir>/taggers/, or vision_model through Ollama; auto: the "
                   "tagger when there is one")
@click.option("--tagger", "tagger_name", metavar="NAME", help="--auto: the tagger folder's name [default: the first]")
@click.option("--table", type=click.Path(path_type=Path, dir_okay=False),
              help="the caption table CSV [default: FOLDER/captions.csv]")
@trigger_option
@flip_tag_option
def caption(folder: Path, init: bool, auto: bool, proposer: str, tagger_name: str | None, table: Path | None,
            trigger: str | None, flip_tag: str) -> None:
    """Write one .txt caption per image from a table the artist edits (or --auto proposes).

    Captions read `TRIGGER, framing, pose/action, background`. The table has the columns
    file,framing,pose,background (one phrase per cell, no commas) and, with proposals, status
    (proposed/confirmed: confirm a proposal before captions are written); flips are not listed: they
    get their source's caption plus the flip tag.

    \b
    Examples:
      sidecar dataset caption set/ --init                      # writes set/captions.csv
      sidecar dataset caption set/ --auto                      # proposals, status proposed: check, confirm
      sidecar dataset caption set/ --trigger spyke_plasma_v1 --table set/captions.csv
    """
    table = table or folder / caption_mod.TABLE_NAME
    word = _trigger(trigger)
    if init and auto:
        raise click.UsageError("give --init or --auto, not both")
    if auto:
        from sidecar.dataprep.propose_cli import propose

        propose(folder, table, word, flip_tag, proposer, tagger_name, _settings())
        return
    if init:
        result = caption_mod.init_table(folder, table, word)
        caption_mod.write_table(table, result.rows)
        click.echo(f"wrote {table}: {len(result.rows)} row(s) ({len(result.added)} new"
                   + (f", {len(result.prefilled)} prefilled from existing captions" if result.prefilled else "")
                   + (f", dropped {len(result.dropped)} for missing images" if result.dropped else "") + ")")
        click.echo(f"fill in framing, pose, background, then run "
                   f"`sidecar dataset caption {folder} --table {table}`")
        return
    writes = caption_mod.plan_captions(folder, table, word, flip_tag)
    caption_mod.write_captions(writes)
    for w in writes:
        click.echo(f"{w.path.name}: {w.text}")
    click.echo(f"wrote {len(writes)} caption(s)")


# -- check ----------------------------------------------------------------------------------------

@dataset.command()
@click.argument("folder", type=click.Path(path_type=Path))
@trigger_option
@flip_tag_option
@click.option("--min-images", default=15, show_default=True, type=click.IntRange(min=1),
              help="fewest source images before flips")
@click.option("--max-images", default=20, show_default=True, type=click.IntRange(min=1),
              help="most source images before flips")
@click.option("--size", default=512, show_default=True, type=click.IntRange(min=8), help="required square size")
@click.option("--asymmetric/--symmetric", default=True, show_default=True,
              help="the character has left/right-specific details (flips contradict them)")
@click.option("--max-flip-share", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="warn when flips are more than this share of an asymmetric character's images")
@click.option("--max-hash-distance", default=6, show_default=True, type=click.IntRange(0, 64),
              help="pHash bits (of 64) within which two images count as near-duplicates")
@click.option("--project", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="the project whose character.toml `references` judge likeness [default: project_root, else "
                   "the nearest character.toml above FOLDER]")
@click.option("--preset", type=click.Choice(["character", "style", "concept"]), default=None,
              help="check as the training quality gate does for this preset (its image count, the family's short "
                   "side, any caption shape) instead of the count, size and caption format above")
@click.option("--family", type=click.Choice(["sd15", "sdxl", "flux"]), default="sd15", show_default=True,
              help="with --preset: the base model's family (its short side: 512 sd15, 1024 sdxl and flux)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
def check(folder: Path, trigger: str | None, flip_tag: str, min_images: int, max_images: int, size: int,
          asymmetric: bool, max_flip_share: float, max_hash_distance: int, project: Path | None,
          preset: str | None, family: str, as_json: bool) -> None:
    """Check a training set: 15-20 images before flips, 512 px, captioned, trigger word first,
    four caption parts, no near-duplicates, no blank images, and (with a project's reference set and the
    likeness weights) every image the character, flips judged mirrored. Exits 1 on errors; warnings do
    not fail.

    \b
    Examples:
      sidecar dataset check set/
      sidecar dataset check set/ --symmetric --json
      sidecar dataset check set/ --preset character --family sdxl    # as the training gate judges it
    """
    opts = check_mod.CheckOptions(trigger=_trigger(trigger), min_images=min_images, max_images=max_images,
                                  size=size, asymmetric=asymmetric, max_flip_share=max_flip_share,
                                  flip_tag=flip_tag, max_phash=max_hash_distance)
    if preset is not None:  # the gate's thresholds (sidecar/dataprep/gate.py), the rest as given
        gate = gate_options(opts.trigger, preset, family)
        opts.min_images, opts.max_images, opts.min_side, opts.parts, opts.what = (
            gate.min_images, gate.max_images, gate.min_side, gate.parts, gate.what)
    report = check_mod.check_dataset(folder, opts, _likeness(folder, project))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
    sys.exit(EXIT_FAILED if report.errors else 0)


def _likeness(folder: Path, project: Path | None):
    """The judge for `check`: the project named, the configured one, or the one whose character.toml is
    nearest above the set; none when there is no such project (the check says so)."""
    from sidecar.assist.character import find_character
    from sidecar.likeness.judge import service_for

    settings = _settings()
    if project is None:
        found = find_character(folder.resolve())
        project = settings.project_root or (found.parent if found else None)
    return service_for(settings, project.resolve()) if project is not None else None


def print_report(report: check_mod.Report) -> None:
    rows = report.rows()
    summary = (f"{report.folder}: {report.sources} images + {report.flips} flips, "
               f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        colours = {"ok": "green", "warning": "yellow", "error": "red"}
        table = Table(title=str(report.folder))
        for col in ("check", "status", "detail"):
            table.add_column(col)
        for check_name, status, detail in rows:
            table.add_row(check_name, f"[{colours[status]}]{status}[/]", detail)
        console = Console()
        console.print(table)
        console.print(summary, highlight=False)
        return
    for check_name, status, detail in rows:
        click.echo(f"{status:<8} {check_name:<11} {detail}")
    click.echo(summary)


# -- layout ---------------------------------------------------------------------------------------

@dataset.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repeats", default=10, show_default=True, type=int, help="kohya repeats of each image per epoch")
@click.option("--class", "class_name", default="anime character", show_default=True,
              help="class tokens: img/<repeats>_<trigger> <class>/ and reg/<reg-repeats>_<class>/")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="training root: img/ (and reg/) are created in it")
@trigger_option
@click.option("--reg", "reg_dir", type=click.Path(path_type=Path, file_okay=False),
              help="regularisation images to copy into reg/<reg-repeats>_<class>/ (from `dataset reg`)")
@click.option("--reg-repeats", default=1, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="replace img/ (and reg/) already in --out")
@click.option("--skip-check", is_flag=True, help="lay out even when `check` reports errors")
def layout(folder: Path, repeats: int, class_name: str, out: Path, trigger: str | None, reg_dir: Path | None,
           reg_repeats: int, overwrite: bool, skip_check: bool) -> None:
    """Lay a checked set out the way kohya's train_network.py reads it.

    \b
    Example:
      sidecar dataset layout set/ --repeats 10 --class "anime character" --reg reg/ --out train/
      # -> train/img/10_spyke_plasma_v1 anime character/   train/reg/1_anime character/
    """
    word = _trigger(trigger)
    if not skip_check:
        report = check_mod.check_dataset(folder, check_mod.CheckOptions(trigger=word))
        if report.errors:
            print_report(report)
            click.echo("error: the set has errors (above); fix them or pass --skip-check. Nothing was written.",
                       err=True)
            sys.exit(EXIT_FAILED)
    plan = layout_mod.plan_layout(folder, out, repeats=repeats, class_name=class_name, trigger=word,
                                  reg=reg_dir, reg_repeats=reg_repeats, overwrite=overwrite)
    layout_mod.apply_layout(plan)
    images = sum(1 for c in plan.copies if c.target.parts[0] == "img" and c.target.suffix != ".txt")
    regs = sum(1 for c in plan.copies if c.target.parts[0] == "reg" and c.target.suffix != ".txt")
    click.echo(f"wrote {plan.train_data_dir / plan.img_subset} ({images} images)")
    if regs:
        click.echo(f"wrote {plan.root / 'reg' / plan.reg_subset} ({regs} images)")
    for note in plan.notes:
        click.echo(note)
    if plan.reg_subset is None:
        click.echo("no regularisation set: render one with `sidecar dataset reg --count 150 --prompt ... --out DIR` "
                   "and pass --reg DIR")
    click.echo(f"train with: POST /loras/train {{\"datasetDir\": \"{plan.root}\", ...}}")


# -- reg ------------------------------------------------------------------------------------------

@dataset.command()
@click.option("--count", default=150, show_default=True, type=int, help="images in the set (100-200 recommended)")
@click.option("--prompt", required=True, help="a generic prompt for the class, without the trigger word")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="folder for reg_NNNN.png")
@click.option("--caption", "caption_text", default=None, help="caption of every image [default: the prompt]")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(min=0), help="seed of image 1; image i uses seed+i-1")
@click.option("--width", default=512, show_default=True, type=int)
@click.option("--height", default=512, show_default=True, type=int)
@click.option("--negative-prompt", default=None, help="[default: the daemon's]")
@click.option("--steps", default=None, type=int, help="[default: the daemon's]")
@click.option("--cfg", default=None, type=float, help="[default: the daemon's]")
@click.option("--sampler", default=None, help="[default: the daemon's]")
@click.option("--scheduler", default=None, help="[default: the daemon's]")
@click.option("--checkpoint", default=None, help="base model file name [default: the daemon's]")
@url_option
@click.option("--force", is_flag=True, help="resume even though reg.json records other settings")
@click.option("--poll-interval", default=1.0, type=click.FloatRange(min=0.01), hidden=True)
def reg(count: int, prompt: str, out: Path, caption_text: str | None, seed: int, width: int, height: int,
        negative_prompt: str | None, steps: int | None, cfg: float | None, sampler: str | None,
        scheduler: str | None, checkpoint: str | None, url: str | None, force: bool, poll_interval: float) -> None:
    """Render a regularisation set through the running daemon: base model, no LoRA.

    Resumable: images already in --out are skipped (run the same command again after a stop).

    \b
    Example:
      sidecar dataset reg --count 150 --prompt "anime character, full body, simple background" --out reg/
    """
    spec = reg_mod.RegSpec(count=count, prompt=prompt, caption=(caption_text or prompt).strip(), seed=seed,
                           width=width, height=height, negative_prompt=negative_prompt, steps=steps, cfg=cfg,
                           sampler=sampler, scheduler=scheduler, checkpoint=checkpoint)
    plan = reg_mod.plan_reg(spec, out, force=force)
    daemon = DaemonClient.for_settings(_settings(), url)
    if plan.done:
        click.echo(f"{len(plan.done)} of {count} image(s) already in {out}; rendering {len(plan.todo)}")
    code = asyncio.run(_reg(plan, daemon, poll_interval))
    sys.exit(code)


async def _reg(plan: reg_mod.RegPlan, daemon: DaemonClient, poll_interval: float) -> int:
    reporter = RichReporter() if sys.stdout.isatty() else LineReporter()
    try:
        async with daemon as client:
            # Ask first, so that a daemon that is down or busy training leaves --out untouched.
            training = (await client.health()).get("training")
            if training and plan.todo:
                raise TrainingInProgress(f"{busy_message(training)} Run `reg` again then.", {"training": training})
            await reg_mod.run_reg(plan, client, reporter, poll_interval=poll_interval)
    finally:
        reporter.close()
    click.echo(f"{plan.spec.count} image(s) with captions in {plan.out}")
    return 0
