"""`dataset caption DIR --auto`: run the proposer over the set (`sidecar.dataprep.proposals.run_proposals`,
which the studio's `POST /dataset/captions/propose` runs too), write the table once, and say what was
proposed, kept and left for the artist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from sidecar.dataprep.proposals import run_proposals, write_proposals
from sidecar.config import Settings


def propose(folder: Path, table: Path, trigger: str, flip_tag: str, proposer: str, tagger_name: str | None,
            settings: Settings) -> None:
    run = asyncio.run(run_proposals(folder, table, trigger, flip_tag, proposer, tagger_name, settings))
    if run.proposed:  # nothing new: the table stays byte for byte as the artist saved it
        run.rows = write_proposals(table, run)
    for image, got in run.proposed.items():
        row = next(r for r in run.rows if r.file == image)
        click.echo(f"proposed {image}: {row.framing or '?'} | {row.pose or '?'} | {row.background or '?'}"
                   + (f"  ({', '.join(got.evidence)})" if got.evidence else ""))
    for image, parts in run.unfilled.items():
        click.echo(f"warning: {image}: no proposal for {', '.join(parts)}: fill it in", err=True)
    click.echo(f"{'wrote' if run.proposed else 'kept'} {table}: {len(run.proposed)} proposed"
               + (f" by {run.proposer}" if run.proposed else "")
               + (f", kept {len(run.kept)} confirmed" if run.kept else ""))
    if run.proposed:
        click.echo(f"check each proposed row, set its status to confirmed, then run "
                   f"`sidecar dataset caption {folder} --table {table}`")
