"""The `sidecar` command: `serve` and `config show` here; the other groups load lazily from their
packages (models, loras, dataset, launchd, doctor) so `sidecar serve` never imports what it does not use.

Exit codes: 0 ok, 1 failure, 2 usage or configuration error (the full list: `sidecar.errors`).
What the command groups share (options, settings, the error-to-exit-code mapping) is in
`sidecar.cli_support`, so the groups never import this module back.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.handlers
import os
import sys
import threading
from typing import Any

import click

from sidecar.cli_support import CONTEXT_SETTINGS, ToolGroup, config_options, settings_from
from sidecar.config import Settings
from sidecar.hosts import is_loopback
from sidecar.errors import EXIT_FAILED, DatabaseUnusable, SidecarError

LAZY_COMMANDS = {
    "models": ("sidecar.engine.cli:models", "Models: make-tiny, list, fetch ccip (the likeness weights)."),
    "likeness": ("sidecar.likeness.cli:likeness", "Is an image the character? check the reference set, score images."),
    "loras": ("sidecar.loras.cli:loras", "LoRA training, checkpoint sweeps and promotion."),
    "dataset": ("sidecar.dataprep.cli:dataset", "Training-set tools: crop, flip, caption, check, layout, reg."),
    "launchd": ("sidecar.launchd.cli:launchd_cli", "Install the launchd agents (macOS)."),
    "doctor": ("sidecar.doctor.cli:doctor", "Check what is installed and how to fix what is missing."),
    "grid": ("sidecar.grids.cli:grid", "Render every combination of job parameters into a labelled contact sheet."),
    "prompt": ("sidecar.assist.cli:prompt", "Page prompts: refine one from feedback through a local Ollama."),
    "concepts": ("sidecar.concepts.cli:concepts", "Concepts: fields with locks, composed by the local LLM, "
                                                  "rendered in rounds, steered by your picks."),
    "gc": ("sidecar.gc:gc", "Remove finished jobs older than keep_days and their images (--dry-run)."),
    "studio": ("sidecar.studio.cli:studio", "Open the studio (the daemon's web page) in the browser."),
    "sync": ("sidecar.storage.cli:sync", "Keep datasets, LoRAs and outputs in the [storage] bucket (push, pull)."),
    "backends": ("sidecar.backends.cli:backends", "List the backends; rent a GPU with ComfyUI on vast.ai, release it."),
    "demo": ("sidecar.demo:demo", "Render the example page end to end on tiny models (no ComfyUI, no downloads)."),
}


class LazyGroup(ToolGroup):
    """Sub-groups are imported only when invoked, so `--help` and `serve` stay light."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name][0].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, cmd.get_short_help_str(60)) for name, cmd in self.commands.items()]
        rows += [(name, help_) for name, (_, help_) in LAZY_COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


def remote_bind_warning(settings: Settings) -> str | None:
    """What `serve` warns when it binds beyond loopback (allowed only with --allow-remote); None otherwise."""
    if is_loopback(settings.host):
        return None
    return (f"binding to {settings.host} (--allow-remote): the daemon is reachable from the network; "
            "every request must carry its token")


# launchd SIGKILLs a job 20 s after SIGTERM; past this the daemon exits by itself, whatever still runs.
SHUTDOWN_LIMIT = 15.0


def bound_shutdown(app: Any, limit: float = SHUTDOWN_LIMIT) -> None:
    """Arm a watchdog when shutdown begins: a cleanup that hangs cannot keep the process alive."""

    def overrun() -> None:
        logging.getLogger("sidecar").error("shutdown still not done after %.0f s: exiting now", limit)
        exit_process(EXIT_FAILED)

    async def arm(_app: Any) -> None:
        timer = threading.Timer(limit, overrun)
        timer.daemon = True
        timer.start()

    app.on_shutdown.insert(0, arm)


def exit_process(code: int) -> None:
    """Leave at once once everything is closed: the interpreter's own teardown (torch's modules, joining a
    render thread that is still finishing its step) can take seconds more and is not needed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


LOG_BYTES, LOG_BACKUPS = 10 * 1024 * 1024, 5  # sidecar.log, sidecar.log.1 ... .5


def setup_logging(settings: Settings) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    # Rotated: under launchd the daemon runs for months and logs one line per request. launchd's own
    # stdout/stderr files are never rotated: its agent passes --no-log-stderr so this file is the only one.
    to_file = logging.handlers.RotatingFileHandler(settings.logs_dir / "sidecar.log", maxBytes=LOG_BYTES,
                                                   backupCount=LOG_BACKUPS, encoding="utf-8")
    handlers: list[logging.Handler] = [to_file]
    if settings.log_stderr:
        handlers.insert(0, logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our middleware logs each request once


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="plasma-sidecar")
def main() -> None:
    """plasma-sidecar: local image generation and LoRA training for the manga page pipeline.

    \b
    Examples:
      sidecar serve                                   # embedded engine, 127.0.0.1:3000
      sidecar serve --comfyui-url http://127.0.0.1:8188
      sidecar models make-tiny --out ./models         # tiny random models for a demo
      sidecar config show
    """


@main.command()
@config_options
def serve(**flags: Any) -> None:
    """Run the daemon in the foreground (Ctrl-C stops it and its ComfyUI, if it started one)."""
    from aiohttp import web

    from sidecar.api.app import create_app
    from sidecar.datadir_check import check_data_dir
    from sidecar.datadir_lock import DataDirLock
    from sidecar.listen import bind_listeners
    from sidecar.logpipe import trim_stderr

    trim_stderr()  # under launchd stderr is a file launchd never rotates
    settings, _ = settings_from(flags)
    # Claimed in this order, before anything reads or writes the data dir (logs included): 1. the data
    # dir's lock (a second daemon exits here, naming the owner); 2. the port (before recovery runs).
    lock = DataDirLock(settings.data_dir)
    try:
        check_data_dir(settings)  # a file where a folder belongs: one line, before the lock's mkdir meets it
        lock.acquire(settings.host, settings.port)
        sockets = bind_listeners(settings.host, settings.port)
    except SidecarError as exc:
        lock.release()
        click.echo(f"sidecar: {exc.message} ({exc.code})", err=True)
        sys.exit(exc.exit_code)
    setup_logging(settings)
    log = logging.getLogger("sidecar")
    warning = remote_bind_warning(settings)
    if warning:
        log.warning("%s", warning)
    log.info("sidecar starting on http://%s:%d (engine %s, profile %s, data %s)", settings.host, settings.port,
             settings.resolved_engine, settings.profile, settings.data_dir)
    app = create_app(settings, datadir_lock=lock)
    bound_shutdown(app)
    try:
        # shutdown_timeout bounds how long open requests may hold up SIGTERM (the /events sockets are
        # closed first, by the app's on_shutdown); launchd kills a job that has not exited in 20 s.
        web.run_app(app, sock=sockets, print=None, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    except DatabaseUnusable as exc:
        log.error("%s", exc.message)  # one line, no traceback: the path and what to do
        lock.release()
        exit_process(exc.exit_code)
    log.info("sidecar stopped")
    lock.release()  # after the app's cleanup stopped kohya and ComfyUI
    exit_process(0)


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@config_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def config_show(as_json: bool, **flags: Any) -> None:
    """Print the effective configuration and where each value came from."""
    settings, sources = settings_from(flags)
    values = settings.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps({k: {"value": v, "source": sources[k]} for k, v in values.items()}, indent=2))
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        click.echo(f"{key:<{width}}  {json.dumps(value):<40}  ({sources[key]})")


if __name__ == "__main__":
    main()
