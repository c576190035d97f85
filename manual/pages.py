"""The generated pages by their path in the manual (under docs/), each with the function that writes it."""

from __future__ import annotations

from collections.abc import Callable

from manual import api_page, cli_page, errors_page, settings_page

PAGES: dict[str, Callable[[], str]] = {
    settings_page.PATH: settings_page.render,
    cli_page.PATH: cli_page.render,
    api_page.PATH: api_page.render,
    errors_page.PATH: errors_page.render,
}
