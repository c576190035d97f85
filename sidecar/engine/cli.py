"""`sidecar models`: make the tiny random model set, and list what a models dir holds."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sidecar.cli_support import tool_group
from sidecar.errors import EngineUnavailable


@tool_group()
def models() -> None:
    """Embedded-engine models (a ComfyUI-style dir: checkpoints/, loras/, controlnet/).

    \b
    Examples:
      sidecar models make-tiny --out ./models
      sidecar models make-tiny --out ./models --family sdxl
      sidecar serve --engine embedded --models-dir ./models --device cpu
      sidecar models list --models-dir ./models
      sidecar models fetch ccip                      # the likeness judge's weights (once)
    """


@models.command("make-tiny")
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="models dir to write (checkpoints/, loras/, controlnet/ are created in it)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random weights")
@click.option("--family", type=click.Choice(["sd15", "sdxl"]), default="sd15", show_default=True,
              help="the architecture: SD1.5 (checkpoint, LoRA, ControlNet) or SDXL (checkpoint, LoRA)")
@click.option("--full-size", is_flag=True,
              help="the real architecture with random weights (SD1.5 ~2 GB, SDXL ~6.9 GB in fp16; for benchmarks)")
@click.option("--fp16", is_flag=True, help="store the weights in fp16, as most real checkpoints are")
@click.option("--json", "as_json", is_flag=True, help="print the written paths as JSON")
def make_tiny(out: Path, seed: int, family: str, full_size: bool, fp16: bool, as_json: bool) -> None:
    """Write a random-weight SD1.5-architecture model set (checkpoint, kohya LoRA, ControlNet) and a
    tiny random likeness model (likeness/ccip-tiny/, CCIP's inputs and outputs); with `--family sdxl`,
    an SDXL-architecture checkpoint and kohya SDXL LoRA instead.

    The files have the formats of real ones (original SD1.5 key layout, SDXL's SGM layout, kohya LoRA
    keys and ss_* metadata, ControlNet 1.x layout), small enough that a 512x768 job takes seconds on a
    CPU. Each model has a NAME.arch.json beside it naming its architecture, and the checkpoint a
    byte-level tokenizer folder. Use the checkpoint with `checkpoint = "tiny-sd15.safetensors"` (or
    `tiny-sdxl.safetensors`, on a profile that runs SDXL such as m1max-32gb).
    """
    try:
        import torch

        from sidecar.engine.tiny import make_models
        from sidecar.engine.tiny_sdxl import make_sdxl_models
    except ImportError as exc:
        raise EngineUnavailable(f"the embedded engine is not installed ({exc}); pip install -e '.[engine]'") from None
    from sidecar.likeness.tiny import make_tiny_likeness

    dtype = torch.float16 if fp16 else torch.float32
    if family == "sdxl":
        written = make_sdxl_models(out, seed=seed, full_size=full_size, dtype=dtype)
        paths = {"checkpoint": str(written.checkpoint), "lora": str(written.lora)}
    else:
        written = make_models(out, seed=seed, full_size=full_size, dtype=dtype)
        paths = {"checkpoint": str(written.checkpoint), "lora": str(written.lora),
                 "controlnet": str(written.controlnet), "likeness": str(make_tiny_likeness(out, seed=seed))}
    if as_json:
        click.echo(json.dumps(paths, indent=2))
        return
    for kind, path in paths.items():
        click.echo(f"{kind:<11} {path}")
    if family == "sdxl":
        click.echo(f"\nnext: SIDECAR_CHECKPOINT={written.checkpoint.name} SIDECAR_PROFILE=m1max-32gb "
                   f"sidecar serve --engine embedded --models-dir {out}")
        return
    click.echo(f"\nnext: SIDECAR_CHECKPOINT={written.checkpoint.name} SIDECAR_LIKENESS_MODEL=ccip-tiny "
               f"sidecar serve --engine embedded --models-dir {out}")


@models.command("list")
@click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="the models dir (checkpoints/, loras/, controlnet/)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(models_dir: Path, as_json: bool) -> None:
    """List the checkpoints, LoRAs and ControlNets the embedded engine sees."""
    from sidecar.engine.models import FOLDERS, list_models

    found = {folder: list_models(models_dir, folder) for folder in FOLDERS}
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for folder, names in found.items():
        click.echo(f"{folder}/")
        for name in names or ["(none)"]:
            click.echo(f"  {name}")


@models.command("fetch")
@click.argument("what", type=click.Choice(["ccip"]))
@click.option("--models-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="the models folder [default: the configuration's models_dir, else <data_dir>/models]")
@click.option("--model", default=None, help="the CCIP model [default: the likeness_model setting]")
@click.option("--revision", default=None, help="a hub revision (commit) to pin [default: main]")
@click.option("--endpoint", default=None, help="a Hugging Face hub mirror [default: huggingface.co, or HF_ENDPOINT]")
@click.option("--json", "as_json", is_flag=True, help="print the fetched files as JSON")
def fetch(what: str, models_dir: Path | None, model: str | None, revision: str | None, endpoint: str | None,
          as_json: bool) -> None:
    """Download the likeness judge's weights (CCIP, from the hub repo deepghs/ccip_onnx) into
    <models>/likeness/<model>/, printing each file's size and sha256. The only time they are downloaded:
    jobs never fetch anything."""
    from sidecar.cli_support import current_settings
    from sidecar.likeness.fetch import fetch_ccip

    settings = current_settings()
    target = models_dir or settings.models_path
    done = fetch_ccip(target, model or settings.likeness_model, revision, endpoint)
    if as_json:
        click.echo(json.dumps([{"file": str(f.path), "size": f.size, "sha256": f.sha256} for f in done], indent=2))
        return
    for f in done:
        click.echo(f"{f.path}  {f.size} bytes  sha256 {f.sha256}")
