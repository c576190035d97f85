"""`sidecar demo`: the whole stack on a fresh machine, with no ComfyUI, no real model and no network.

Makes tiny random-weight models (`sidecar models make-tiny`), copies the example chapter, starts the
daemon on the embedded engine with its own config and port, renders page 1 through the pipeline stage
(`generate --comfyui -c 1 --page 1`), and stops the daemon. Everything lands in one folder, kept
between runs: a second run reuses the models and adds version 2 of the page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import client_token, http_url

TINY_CHECKPOINT = "tiny-sd15.safetensors"
DEMO_LORA = "spyke_plasma_v1.safetensors"  # the example chapter's LoRA, the tiny one standing in for it
START_TIMEOUT = 120.0  # the first start imports torch and diffusers


def _health(url: str, token: str | None = None) -> bool:
    """Whether something answers HTTP at `url` (a refusal such as a 401 is an answer too)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/health", headers=headers), timeout=2) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _write_config(folder: Path, port: int) -> Path:
    config = folder / "sidecar.toml"
    config.write_text(
        'engine = "embedded"\n'
        'device = "cpu"\n'
        f"port = {port}\n"
        f'data_dir = "{folder / "data"}"\n'
        f'models_dir = "{folder / "models"}"\n'
        f'checkpoint = "{TINY_CHECKPOINT}"\n'
        'controlnet_model = "tiny-controlnet.safetensors"\n'
        f'project_root = "{folder / "project"}"\n',  # the studio's Pages view shows the demo's project
        encoding="utf-8",
    )
    return config


def model_families(url: str, token: str | None = None) -> str:
    """The demo's checkpoint and LoRA with the family the daemon read from their headers (GET /models), as
    one line; a daemon that does not answer is named, never fatal (the render says the rest)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=headers), timeout=30) as resp:
            listed = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"== model families not known: GET /models failed ({exc})"
    found = {m["name"]: m["family"] for kind in ("checkpoints", "loras") for m in listed.get(kind, [])}
    shown = [f"{name}: {found.get(name, 'not listed')}" for name in (TINY_CHECKPOINT, DEMO_LORA)]
    return f"== model families (read from the files' headers): {'; '.join(shown)}"


def studio_hint(config: Path, url: str) -> str:
    """How to see the demo's page in the studio: the daemon again on the demo's config, and the URL."""
    here = Path(sys.executable).parent / "sidecar"
    command = str(here) if here.is_file() else "sidecar"
    return (f"== see it in the studio (the daemon's web page):\n"
            f"   {command} serve --config {config}\n"
            f"   then open {url}/#/pages/1/1   (or run `{command} studio --config {config}`)")


@click.command("demo")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False), default=Path("demo"),
              show_default=True, help="where the models, the daemon's data and the project go")
@click.option("--port", default=3917, show_default=True, type=click.IntRange(1, 65535))
def demo(folder: Path, port: int) -> None:
    """Render page 1 of the example chapter end to end on tiny models (no ComfyUI, no downloads).

    The image lands in DIR/project/output/ch-01/raw/, the daemon's log in DIR/daemon.log.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    python = sys.executable
    models = folder / "models"
    if not (models / "checkpoints" / TINY_CHECKPOINT).is_file():
        click.echo(f"== making tiny models in {models}")
        subprocess.run([python, "-m", "sidecar.cli", "models", "make-tiny", "--out", str(models)], env=env, check=True)
        # The example chapter asks for the character's LoRA by name; the tiny one stands in for it.
        shutil.copyfile(models / "loras" / "tiny-lora.safetensors", models / "loras" / DEMO_LORA)
    project = folder / "project"
    if not project.is_dir():
        shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    config = _write_config(folder, port)
    url = http_url("127.0.0.1", port)
    token = client_token(config, env)  # SIDECAR_TOKEN, when the artist set one: the daemon requires it then
    if _health(url, token):
        raise click.ClickException(f"something already answers on {url}: stop it or pass --port")

    click.echo(f"== starting the daemon on {url} (log: {folder / 'daemon.log'})")
    with (folder / "daemon.log").open("ab") as log:
        daemon = subprocess.Popen([python, "-m", "sidecar.cli", "serve", "--config", str(config)], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _health(url, token):
            if daemon.poll() is not None:
                raise click.ClickException(f"the daemon exited with {daemon.returncode}; see {folder / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"the daemon did not answer in {START_TIMEOUT:.0f} s; see "
                                           f"{folder / 'daemon.log'}")
            time.sleep(0.5)
        click.echo(model_families(url, token))
        click.echo("== generate --comfyui -c 1 --page 1")
        done = subprocess.run([python, "-m", "pipeline_stage", "--comfyui", "-c", "1", "--page", "1",
                               "--root", str(project), "--daemon", url], env=env)
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    raw = project / "output" / "ch-01" / "raw"
    if done.returncode == 0:
        for path in sorted(raw.glob("ch01_p001_v*")):
            click.echo(f"  {path}")
        click.echo(studio_hint(config, url))
    sys.exit(done.returncode)
