"""`sidecar backends`: list the backends with what rented ones cost, rent a ComfyUI on vast.ai, release one.

The daemon owns what it rents (it holds the tunnel, routes jobs there and destroys the instance when it
is idle, over a limit, released, or at its own stop): these commands only ask it, and `rent` follows the
rental until it serves (or fails, saying why).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from sidecar.cli_support import current_settings, tool_group, url_option
from sidecar.client import DaemonClient
from sidecar.errors import JobFailed

FOLLOW_POLL = 2.0
ENDED = ("serving", "failed", "destroyed", "destroy_failed")


@tool_group()
def backends() -> None:
    """The daemon's generation backends, and GPUs with ComfyUI rented on vast.ai.

    \b
    Examples:
      sidecar backends list
      sidecar backends rent --provider vast --gpu "RTX 4090" --max-price-per-hour 0.5 --max-total-cost 3
      sidecar backends rent rented          # a [[backends]] table with kind = "vast"
      sidecar backends release vast-1
    Exit codes: 0 done, 1 renting failed (the reason is printed), 2 refused, 3 the daemon is not running.
    """


def _client(url: str | None, timeout: float | None = 30) -> DaemonClient:
    return DaemonClient.for_settings(current_settings(), url, timeout=timeout)


def _line(r: dict[str, Any]) -> str:
    gpu = f" {r['gpu']}" if r.get("gpu") else ""
    price = f" ${r['pricePerHour']:.3f}/h" if r.get("pricePerHour") else ""
    limit = f" of ${r['maxTotalCost']:g}" if r.get("maxTotalCost") else ""
    idle = f", idle {r['idleSeconds']:.0f} s of {r['idleMinutes']:g} min" if r.get("idleSeconds") is not None else ""
    why = f" - {r['message']}" if r.get("message") else ""
    return f"{r['name']}: {r['state']}{gpu}{price}, cost ${r['cost']:.4f}{limit}{idle}{why}"


@backends.command("list")
@url_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output (GET /backends)")
def list_(url: str | None, as_json: bool) -> None:
    """The backends in routing, and this daemon's rentals with their cost so far."""

    async def go() -> dict[str, Any]:
        async with _client(url) as client:
            return await client.request("GET", "/backends")

    body = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for b in body["backends"]:
        reason = f" ({b['reason']})" if b.get("reason") else ""
        click.echo(f"{b['name']}: {b['state']}{reason}, {b['kind']}, {b['profile']}, {b['device'] or '?'}")
    for r in body["rentals"]:
        click.echo("rented " + _line(r))
    click.echo(f"rented in all: ${body['cost']:.4f}")


@backends.command()
@click.argument("name", required=False)
@click.option("--provider", type=click.Choice(["vast"]), default="vast", show_default=True, help="where to rent")
@click.option("--gpu", default=None, help="the GPU model, as vast.ai names it (\"RTX 4090\") [default: any]")
@click.option("--max-price-per-hour", type=float, default=None, help="most $/hour [default: [remote.vast]'s]")
@click.option("--max-total-cost", type=float, default=None, help="destroyed when its cost reaches this, $")
@click.option("--max-hours", type=float, default=None, help="destroyed after this many hours")
@click.option("--idle-minutes", type=float, default=None, help="destroyed after this many minutes without a job "
                                                                "[default: 15]")
@click.option("--profile", default=None, help="its hardware profile [default: cuda-24gb]")
@click.option("--tag", "tags", multiple=True, help="a label `where` can name (repeatable)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow it until it serves or fails")
@url_option
def rent(name: str | None, provider: str, gpu: str | None, max_price_per_hour: float | None,
         max_total_cost: float | None, max_hours: float | None, idle_minutes: float | None, profile: str | None,
         tags: tuple[str, ...], wait: bool, url: str | None) -> None:
    """Rent a GPU with ComfyUI; it joins the backends once it answers through its SSH tunnel.

    NAME: a [[backends]] table with kind = "vast" (the options override it), or the new backend's name
    [default: vast-1, vast-2, ...].
    """
    body: dict[str, Any] = {"provider": provider, "name": name, "gpu": gpu, "maxPricePerHour": max_price_per_hour,
                            "maxTotalCost": max_total_cost, "maxHours": max_hours, "idleMinutes": idle_minutes,
                            "profile": profile, "tags": list(tags) or None}

    async def go() -> dict[str, Any]:
        async with _client(url) as client:
            rental = await client.request("POST", "/backends/rent", json={k: v for k, v in body.items()
                                                                          if v is not None})
            click.echo(_line(rental))
            last = rental["state"]
            while wait and rental["state"] not in ENDED:
                await asyncio.sleep(FOLLOW_POLL)
                listed = (await client.request("GET", "/backends"))["rentals"]
                rental = next((r for r in reversed(listed) if r["name"] == rental["name"]), rental)
                if rental["state"] != last:
                    last = rental["state"]
                    click.echo(f"{time.strftime('%H:%M:%S')} " + _line(rental))
            return rental

    rental = asyncio.run(go())
    if rental["state"] in ("failed", "destroyed", "destroy_failed"):
        raise JobFailed(f"renting {rental['name']} failed: {rental.get('message')}", {"rental": rental},
                        code="rent_failed")
    if rental["state"] == "serving":
        click.echo(f"{rental['name']} is in routing: submit with where = \"{rental['name']}\" (or a tag of it)")


@backends.command()
@click.argument("name")
@url_option
def release(name: str, url: str | None) -> None:
    """Destroy a rented backend now (a job it runs is re-queued once elsewhere)."""

    async def go() -> dict[str, Any]:
        async with _client(url, timeout=120) as client:
            return await client.request("POST", f"/backends/{name}/release")

    click.echo(_line(asyncio.run(go())))
