"""`sidecar studio`: open the studio of the running daemon in the browser.

With a `token` set the browser cannot send it as a header, so the command asks the daemon (with the
token) for a one-time login path and opens that: the daemon sets the studio's cookie and redirects to
`/`. Without a token it is the same path, and the cookie is simply not needed.
"""

from __future__ import annotations

import asyncio
import webbrowser
from typing import Any

import click

from sidecar.cli_support import CONTEXT_SETTINGS, config_options, settings_from
from sidecar.client import DaemonClient


async def login_url(base_url: str, token: str | None) -> str:
    async with DaemonClient(base_url, timeout=10, token=token) as client:
        answer = await client.request("POST", "/studio/login")
    return base_url.rstrip("/") + answer["path"]


@click.command("studio", context_settings=CONTEXT_SETTINGS)
@config_options
@click.option("--url", default=None, help="the daemon [default: http://<host>:<port> from the configuration]")
@click.option("--open/--no-open", "open_browser", default=True, show_default=True,
              help="open the browser (--no-open only prints the URL, valid for two minutes, one use)")
def studio(url: str | None, open_browser: bool, **flags: Any) -> None:
    """Open the studio (the daemon's web page) in the browser.

    \b
    Examples:
      sidecar studio
      sidecar studio --no-open          # print the one-time URL
    Exit codes: 0 opened (or printed), 3 the daemon is not running.
    """
    settings, _ = settings_from(flags)
    target = asyncio.run(login_url(url or settings.daemon_url, settings.token_value))
    click.echo(target)
    if open_browser and not webbrowser.open(target):
        click.echo("no browser found here: open the URL above yourself", err=True)
