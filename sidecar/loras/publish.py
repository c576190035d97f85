"""`sidecar loras publish RUN|LORA [--with-dataset]`: have the daemon write the LoRA's publish bundle,
`dist/<name>/` and `dist/<name>.zip`, under the project root (else this working folder).

Exit codes: 0 written, 1 the LoRA file is gone, 2 no such run or LoRA / bad input, 3 daemon not running.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from sidecar.cli_support import current_settings, url_option
from sidecar.errors import DaemonRefused
from sidecar.loras.client import TrainingClient


@click.command()
@click.argument("ref", metavar="RUN|LORA")
@click.option("--with-dataset", is_flag=True, help="put the training images and captions in the bundle too")
@click.option("--step", type=click.IntRange(min=1), default=None,
              help="the checkpoint [default: the sweep's pick when there is one, else the final LoRA]")
@click.option("--name", default=None, help="the bundle's name [default: the run's output name]")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="the bundle goes to ROOT/dist/ [default: the project root, else this folder]")
@url_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def publish(ref: str, with_dataset: bool, step: int | None, name: str | None, root: Path | None, url: str | None,
            as_json: bool) -> None:
    """Bundle a trained LoRA to share it: the file, metadata.json (trigger, base model and its sha256, family,
    trainer, steps, preset, likeness), a model card README.md, its samples, the exact training config and a
    dataset manifest. RUN is a run id or output name; LORA an installed LoRA a run here trained.

    \b
    Examples:
      sidecar loras publish spyke_plasma_v1
      sidecar loras publish spyke_plasma_v1 --step 800 --with-dataset
    """
    settings = current_settings()
    where = (root or settings.project_root or Path.cwd()).expanduser().resolve()
    body: dict[str, Any] = {"withDataset": with_dataset, "root": str(where)}
    body |= {k: v for k, v in (("step", step), ("name", name)) if v is not None}

    async def go() -> dict[str, Any]:
        async with TrainingClient.for_settings(settings, url) as client:
            try:
                run_id = (await client.find_run(ref))["id"]
            except DaemonRefused as exc:
                if exc.code != "training_not_found":
                    raise
                run_id = ref  # an installed LoRA's id: the daemon finds the run that trained it
            return await client.request("POST", f"/loras/{run_id}/publish", json=body)

    done = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(done, indent=2))
        return
    click.echo(f"published step {done['step']} of run {done['runId'][:8]}: {done['folder']} ({len(done['files'])} "
               f"files) and {done['zip']}")
    click.echo(f"recommended strength {done['recommendedStrength']:g}; the model card is {done['folder']}/README.md")
