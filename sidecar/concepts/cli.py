"""`sidecar concepts`: the concept builder from a terminal, through the running daemon (started with
`--project`): make a concept from fields, compose it, render a round of four variations, give the
round's feedback, read the intent, make a pick a page's prompt file. Each command is one request of the
`/concepts` routes; `--json` prints the daemon's answer as it is.

Exit codes: 0 done; 2 the daemon refused the input (the error line names the field); 3 no daemon.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from sidecar.cli_support import current_settings, tool_group, url_option
from sidecar.client import DaemonClient
from sidecar.concepts.fields import ALL_FIELDS, FIELD_NAMES
from sidecar.statuses import JOB_TERMINAL


def _call(url: str | None, method: str, path: str, body: Any = None) -> Any:
    async def go() -> Any:
        async with DaemonClient.for_settings(current_settings(), url, timeout=600) as client:
            return await client.request(method, path, json=body)

    return asyncio.run(go())


def _wait(url: str | None, ids: list[str]) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with DaemonClient.for_settings(current_settings(), url) as client:
            return [await client.wait(i, poll_interval=0.5) for i in ids]

    return asyncio.run(go())


def _echo(body: Any, as_json: bool, show) -> None:
    if as_json:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        show(body)


def field_options(f):
    for name in reversed(FIELD_NAMES):
        f = click.option(f"--{name}", name, default=None, help=f"the {name} field's text")(f)
    f = click.option("--extra", "extra", multiple=True, help="a free tag (repeat for several)")(f)
    return click.option("--lock", "locks", multiple=True, type=click.Choice(ALL_FIELDS),
                        help="lock this field (repeat): its tags stay verbatim, the interpreter never changes it")(f)


@tool_group()
def concepts() -> None:
    """Concepts: fields with locks, composed by the local LLM, rendered in rounds, steered by your picks.

    \b
    Examples:
      sidecar concepts new rooftop --subject "1boy on a rooftop" --lighting "dusk" --lock subject
      sidecar concepts round rooftop --seed 100 --wait
      sidecar concepts feedback rooftop 1 --pick JOB --reject JOB:"busy background" --text "calmer"
      sidecar concepts page rooftop --chapter 2 --page 1 --job JOB
    """


def _show_concept(body: dict[str, Any]) -> None:
    click.echo(f"{body['name']} ({body['file']}, {body['rounds']} round(s))")
    for name in ALL_FIELDS:
        field = body["fields"][name]
        text = ", ".join(field["tags"]) if name == "extra" else field["value"]
        click.echo(f"  {'[locked] ' if field['locked'] else '         '}{name:<10} {text}")
    who = body["character"]
    click.echo(f"  character: {who['trigger']}" + (f", {', '.join(who['locked'])}" if who["locked"] else ""))


@concepts.command("list")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def list_(url: str | None, as_json: bool) -> None:
    """The project's concepts."""
    _echo(_call(url, "GET", "/concepts"), as_json, _show_list)


def _show_list(body: dict[str, Any]) -> None:
    for c in body["concepts"]:
        _show_concept(c)
    for u in body.get("unreadable", []):  # a hand-edited file that no longer reads: named, with why
        click.echo(f"{u['name']}: cannot be read ({u['code']}): {u['message']}", err=True)


@concepts.command()
@click.argument("name")
@field_options
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def new(name: str, locks: tuple[str, ...], extra: tuple[str, ...], url: str | None, as_json: bool,
        **values: str | None) -> None:
    """Make concept NAME (concepts/NAME.toml) from fields."""
    fields: dict[str, Any] = {n: {"value": v or "", "locked": n in locks} for n, v in values.items()}
    fields["extra"] = {"tags": list(extra), "locked": "extra" in locks}
    _echo(_call(url, "POST", "/concepts", {"name": name, "fields": fields}), as_json, _show_concept)


@concepts.command()
@click.argument("name")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def show(name: str, url: str | None, as_json: bool) -> None:
    """A concept's fields, locks and character."""
    _echo(_call(url, "GET", f"/concepts/{name}"), as_json, _show_concept)


def _show_composed(c: dict[str, Any]) -> None:
    if c.get("message"):
        click.echo(f"note: {c['message']}", err=True)
    click.echo(f"{c['composer']} ({c['style']}, family {c['family'] or 'unknown'}):")
    for t in c["tags"]:
        click.echo(f"  {t['field']:<10} -> {t['tag']}  ({t['source']})")
    for r in c["refused"]:
        click.echo(f"  refused {r['field']}: {r['tag']!r} ({r['reason']})")
    click.echo(f"prompt: {c['prompt']}")
    click.echo(f"negative: {c['negative']}")


@concepts.command()
@click.argument("name")
@click.option("--checkpoint", default=None, help="the checkpoint whose family picks the style [default: the "
                                                 "concept's, else the daemon's]")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def compose(name: str, checkpoint: str | None, url: str | None, as_json: bool) -> None:
    """Compose NAME's prompt (fields -> tags) without rendering."""
    body = {"checkpoint": checkpoint} if checkpoint else {}
    _echo(_call(url, "POST", f"/concepts/{name}/compose", body), as_json, _show_composed)


@concepts.command("round")
@click.argument("name")
@click.option("--seed", type=click.IntRange(0), default=None, help="the first of the four seeds [default: random]")
@click.option("--checkpoint", default=None, help="render with this checkpoint (kept for the next rounds)")
@click.option("--wait", is_flag=True, help="wait for the four images and print where they are")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def round_(name: str, seed: int | None, checkpoint: str | None, wait: bool, url: str | None, as_json: bool) -> None:
    """Render a round of NAME: the composed prompt as four variations."""
    body: dict[str, Any] = {k: v for k, v in (("seed", seed), ("checkpoint", checkpoint)) if v is not None}
    started = _call(url, "POST", f"/concepts/{name}/rounds", body)
    if wait:
        started["jobs"] = _wait(url, [j["id"] for j in started["jobs"]])

    def show_round(b: dict[str, Any]) -> None:
        _show_composed(b["composed"])
        click.echo(f"round {b['round']} (group {b['groupId']}):")
        for j in b["jobs"]:
            where = (j.get("output") or {}).get("url") if j["status"] == "succeeded" else ""
            click.echo(f"  {j['id']}  seed {j['params']['seed'] if 'params' in j else '?'}  {j['status']}  "
                       f"{where or ''}".rstrip())

    _echo(started, as_json, show_round)
    if wait and any(j["status"] != "succeeded" for j in started["jobs"] if j["status"] in JOB_TERMINAL):
        raise SystemExit(1)


def _reject(text: str) -> dict[str, str]:
    job, _, reason = text.partition(":")
    return {"jobId": job.strip(), "reason": reason.strip()}


@concepts.command()
@click.argument("name")
@click.argument("round_number", metavar="ROUND", type=click.IntRange(1))
@click.option("--pick", "picks", multiple=True, help="a job of the round you like (repeat)")
@click.option("--reject", "rejects", multiple=True, help="JOB or JOB:reason, a job you do not (repeat)")
@click.option("--text", default="", help="anything else, in words")
@click.option("--look", is_flag=True, help="the vision model describes the first pick first (\"more like this\")")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def feedback(name: str, round_number: int, picks: tuple[str, ...], rejects: tuple[str, ...], text: str, look: bool,
             url: str | None, as_json: bool) -> None:
    """Feedback on ROUND of NAME: the interpreter turns it into field changes for the next round."""
    body = {"picks": list(picks), "rejects": [_reject(r) for r in rejects], "text": text, "look": look}

    def show_feedback(b: dict[str, Any]) -> None:
        for m in b["messages"]:
            click.echo(f"note: {m}", err=True)
        for c in b["changes"]:
            click.echo(f"  {c['status']:<9} {c['field']}: {c['old']!r} -> {c['new']!r}"
                       + (f"  ({c['note']})" if c["note"] else ""))
        for p in b["preferences"]:
            click.echo(f"  preference: {p['text']}" + (f" x{p['count']}" if p["count"] > 1 else ""))

    _echo(_call(url, "POST", f"/concepts/{name}/rounds/{round_number}/feedback", body), as_json, show_feedback)


@concepts.command()
@click.argument("name")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def intent(name: str, url: str | None, as_json: bool) -> None:
    """NAME's intent document: its rounds, your feedback and the preferences drawn from it."""

    def show_intent(b: dict[str, Any]) -> None:
        for r in b["intent"]["rounds"]:
            fb = r.get("feedback") or {}
            click.echo(f"round {r['round']}: {r['prompt']}")
            if fb:
                click.echo(f"  picked {len(fb['picks'])}, rejected {len(fb['rejects'])}"
                           + (f", said {fb['text']!r}" if fb["text"] else ""))
        for p in b["preferences"]:
            click.echo(f"preference: {p['text']}" + (f" x{p['count']}" if p["count"] > 1 else ""))
        for n in b["intent"]["notes"]:
            click.echo(f"note: {n}")

    _echo(_call(url, "GET", f"/concepts/{name}/intent"), as_json, show_intent)


@concepts.command()
@click.argument("name")
@click.option("--chapter", "-c", required=True, type=click.IntRange(0), help="the chapter")
@click.option("--page", required=True, type=click.IntRange(0), help="the page")
@click.option("--job", "job_id", required=True, help="the picked job of one of NAME's rounds")
@click.option("--overwrite", is_flag=True, help="replace the page's prompt file if it exists")
@url_option
@click.option("--json", "as_json", is_flag=True, help="the daemon's answer as JSON")
def page(name: str, chapter: int, page: int, job_id: str, overwrite: bool, url: str | None, as_json: bool) -> None:
    """Make a picked job of NAME the page's prompt file; `generate -c C --page P` renders it."""
    body = {"chapter": chapter, "page": page, "jobId": job_id, "overwrite": overwrite}
    _echo(_call(url, "POST", f"/concepts/{name}/page", body), as_json,
          lambda b: click.echo(f"wrote {b['file']}; render it with `generate -c {chapter} --page {page}`"))
