"""`--reproduce`: the LoRAs a version was made with are still the same files, checked before it is sent.

A log entry records each LoRA's SHA-256 (where the daemon had the file); a file replaced under the same
name (a LoRA trained again and promoted) would make another image from the same workflow, so the run
stops with `lora_changed` (exit 2) naming the file, both hashes and what to do. A file the daemon cannot
hash now (only a remote backend has it) cannot be checked: said on stderr, and the run goes on; a file it
no longer has is the daemon's `lora_not_found` at submit.
"""

from __future__ import annotations

import click

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.entry import PageTask
from pipeline_stage.errors import LoraChanged


async def check_lora_hashes(client: DaemonClient, tasks: list[PageTask], *, quiet: bool) -> None:
    wanted = [t for t in tasks if t.lora_hashes]
    if not wanted:
        return
    now = await client.lora_hashes()
    for task in wanted:
        for file, logged in task.lora_hashes:
            if file not in now:
                continue  # the daemon refuses it itself (lora_not_found), naming what is installed
            current = now[file]
            if current is None:
                if not quiet:
                    click.echo(f"note: the daemon cannot read {file} on this machine, so whether it is the file "
                               f"{task.reproduces or 'the version'} was made with is not checked", err=True)
                continue
            if current != logged:
                raise LoraChanged(
                    f"LoRA {file} has changed since {task.reproduces or 'that version'} was made (logged SHA-256 "
                    f"{logged[:12]}…, the daemon's file now {current[:12]}…): the same workflow would not make the "
                    "same image. Put the logged file back to reproduce it, or render the page anew "
                    f"(generate -c {task.page.chapter} --page {task.page.page}).",
                    {"file": file, "loggedSha256": logged, "currentSha256": current, "version": task.reproduces})
