"""`sidecar likeness`: look at the reference set (`check`) and score images against it (`score`),
locally, with the models folder of the configuration (no daemon needed)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sidecar.cli_support import current_settings, tool_group
from sidecar.likeness.judge import service_for

project_option = click.option(
    "--project", "project", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
    help="the project whose character.toml names the references [default: project_root, else this folder]")
models_option = click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                             help="the models folder holding likeness/ [default: the configuration's]")


def _service(project: Path | None, models_dir: Path | None):
    settings = current_settings()
    if models_dir is not None:
        settings = settings.model_copy(update={"models_dir": models_dir})
    return service_for(settings, (project or settings.project_root or Path.cwd()).resolve())


@tool_group()
def likeness() -> None:
    """Is an image the character? Scores against the reference set of character.toml.

    \b
    Examples:
      sidecar models fetch ccip                 # the weights, once
      sidecar likeness check --project .        # the reference set: count, spread, outliers
      sidecar likeness score output/ch-01/raw/*.png
    """


@likeness.command()
@project_option
@models_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def check(project: Path | None, models_dir: Path | None, as_json: bool) -> None:
    """Report the reference set: how many, how alike they are (spread), which do not fit (outliers)."""
    service = _service(project, models_dir)
    refs, report = service.check()
    root = service.project_root
    names = [str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p) for p in refs]
    body = {"count": report.count, "spread": report.spread, "threshold": round(report.threshold, 4),
            "tolerance": report.tolerance, "scorer": service.judge().scorer.name,
            "references": [{"file": n, "typical": t} for n, t in zip(names, report.typical, strict=True)],
            "outliers": [names[i] for i in report.outliers]}
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"{report.count} reference(s), spread {report.spread:.4f} (threshold {report.threshold:.4f}, "
               f"tolerance {report.tolerance:.4f}; scorer {body['scorer']})")
    for n, t in zip(names, report.typical, strict=True):
        mark = "  OUTLIER" if n in body["outliers"] else ""
        click.echo(f"  {n}: median difference to the others {t:.4f}{mark}")
    if report.count < 3:
        click.echo("hint: 3 or more references make the spread and the outliers meaningful")
    if body["outliers"]:
        click.echo(f"{len(body['outliers'])} outlier(s): not like the rest; replace them or check they are the "
                   "character")


@likeness.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@project_option
@models_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def score(images: tuple[Path, ...], project: Path | None, models_dir: Path | None, as_json: bool) -> None:
    """Score IMAGES against the reference set (higher = more alike; same / unsure / different)."""
    found = _service(project, models_dir).score(list(images))
    if as_json:
        click.echo(json.dumps({"results": [{"image": str(p), "likeness": lk.to_json()}
                                           for p, lk in zip(images, found, strict=True)]}, indent=2))
        return
    for path, lk in zip(images, found, strict=True):
        click.echo(f"{lk.score:.3f}  {lk.verdict:<9}  {path}")
