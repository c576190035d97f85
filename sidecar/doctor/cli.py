"""The `sidecar doctor` command: runs the checks (and the bench), prints a table or JSON, sets the exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

import click

from sidecar.cli_support import config_options, settings_from
from sidecar.errors import EXIT_BUSY, EXIT_FAILED, DaemonRefused, SidecarError
from sidecar.doctor.bench import run_bench
from sidecar.doctor.every import every_check
from sidecar.doctor.report import Check

COLOURS = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}


def print_checks(checks: list[Check]) -> None:
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="sidecar doctor")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{COLOURS[c.status]}]{c.status}[/]", c.detail, c.fix)
        Console().print(table)
        return
    for c in checks:
        click.echo(f"{c.status:<5} {c.name:<18} {c.detail}")
        if c.fix:
            click.echo(f"{'':<5} {'':<18} fix: {c.fix}")


def print_bench(bench: dict[str, Any]) -> None:
    click.echo(f"bench: {bench['resolution']}, {bench['steps']} steps, Euler a, {bench['checkpoint']} via "
               f"{bench['source']} (engine {bench.get('engine')}, device {bench.get('device')})")
    for i, run in enumerate(bench["runs"], start=1):
        extra = f", render {run['renderSeconds']} s" if run.get("renderSeconds") is not None else ""
        err = f": {run['error'].get('message')}" if run.get("error") else ""
        click.echo(f"  run {i}: {run['status']} in {run['seconds']} s{extra}{err}")
    verdict = "yes" if bench["underLimit"] else "NO"
    click.echo(f"under 2 minutes: {verdict}")


@click.command("doctor")
@config_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--bench", is_flag=True, help="also render 512x512, 20 steps, Euler a and say if it is under 2 minutes")
@click.option("--runs", default=1, show_default=True, type=click.IntRange(1, 10),
              help="bench renders; the verdict uses the last (the first includes loading the model)")
@click.option("--url", default=None, help="daemon for --bench [default: http://<host>:<port>]")
@click.option("--poll-interval", default=0.5, type=click.FloatRange(min=0.01), hidden=True)
def doctor(as_json: bool, bench: bool, runs: int, url: str | None, poll_interval: float, **flags: Any) -> None:
    """Check what the stack needs and say how to fix what is missing.

    \b
    Examples:
      sidecar doctor
      sidecar doctor --engine comfyui --json
      sidecar doctor --bench --runs 2

    Exit codes: 0 nothing required is missing (and the bench passed), 1 something required is
    missing or the bench failed or took 2 minutes or more, 2 configuration error, 4 device busy.
    """
    settings, _ = settings_from(flags)
    checks = every_check(settings)
    failed = [c for c in checks if c.status == "fail"]
    bench_result = None
    code = 1 if failed else 0
    if bench:
        try:
            bench_result = asyncio.run(run_bench(settings, url or settings.daemon_url, runs, poll_interval))
            code = code or (0 if bench_result["underLimit"] else 1)
        except DaemonRefused as exc:
            bench_result = {"error": {"code": exc.code, "message": exc.message}}
            # A refused bench is a failed check, reported in the table, unless training holds the device.
            code = EXIT_BUSY if exc.exit_code == EXIT_BUSY else EXIT_FAILED
        except SidecarError as exc:  # data_dir_locked: another daemon owns the data dir and does not answer
            bench_result = {"error": {"code": exc.code, "message": exc.message}}
            code = EXIT_FAILED
        except Exception as exc:  # an engine that cannot start: say so, as a failed bench
            bench_result = {"error": {"code": "bench_failed", "message": f"{type(exc).__name__}: {exc}"}}
            code = 1
    if as_json:
        out: dict[str, Any] = {"ok": not failed, "engine": settings.resolved_engine,
                               "checks": [asdict(c) for c in checks]}
        if bench_result is not None:
            out["bench"] = bench_result
        click.echo(json.dumps(out, indent=2))
    else:
        print_checks(checks)
        click.echo(f"{len(failed)} required item(s) missing" if failed else "nothing required is missing")
        if bench_result is not None:
            if "error" in bench_result:
                click.echo(f"bench: {bench_result['error']['message']} ({bench_result['error']['code']})")
            else:
                print_bench(bench_result)
    sys.exit(code)
