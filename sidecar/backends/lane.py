"""Running one job on one member of the pool: copy the model files it lacks, run, measure, and turn
"the backend went down" into a lost prompt the runner re-queues once (elsewhere).

The runner calls `run_on` under the member's lock (one job at a time per backend, hence never two
prompts at once on one ComfyUI). A member taken out by a health probe while running a job ends that
run at once: the job's prompt id is kept as abandoned on the member, and interrupted there when it
answers again (a list kept in the job database), so the re-queued job never also finishes on the first
backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from sidecar.backend import RunContext, RunResult
from sidecar.backends.admission import Needs
from sidecar.backends.member import Member
from sidecar.backends.pool import BackendPool
from sidecar.errors import ComfyUnavailable, JobFailed, PromptLost

log = logging.getLogger("sidecar.backends")


async def run_on(pool: BackendPool, m: Member, ctx: RunContext, needs: Needs,
                 copies: tuple[tuple[str, str], ...] = ()) -> RunResult:
    if m.state == "down":
        raise PromptLost(f"Backend {m.name} went out of routing before the job started ({m.down_reason}).",
                         {"backend": m.name, "reason": "backend_down"})
    if copies:
        await _copy(pool, m, copies)

    def on_progress(step: int, total: int) -> None:
        m.observe(step, total)
        ctx.on_progress(step, total)

    posted: list[str] = [ctx.prompt_id] if ctx.prompt_id else []

    async def on_prompt_id(prompt_id: str) -> None:
        posted.append(prompt_id)
        await ctx.on_prompt_id(prompt_id)

    m.started(ctx.job_id, needs)
    succeeded = False
    run = asyncio.ensure_future(m.backend.run(replace(ctx, on_progress=on_progress, on_prompt_id=on_prompt_id)))
    down = asyncio.ensure_future(m.went_down.wait())
    try:
        finished, _ = await asyncio.wait({run, down}, return_when=asyncio.FIRST_COMPLETED)
        if run not in finished:
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
            if posted:
                await pool.abandon(m, posted[-1], ctx.job_id)
            raise PromptLost(f"Backend {m.name} stopped answering while it ran this job ({m.down_reason}).",
                             {"backend": m.name, "reason": "backend_down", "prompt_id": posted[-1] if posted else None})
        try:
            result = run.result()
        except PromptLost as exc:
            # The server lost it (killed, restarted): out of routing until a probe says it answers again.
            if posted:
                await pool.abandon(m, posted[-1], ctx.job_id)
            pool.take_out(m, exc.message)
            raise
        except ComfyUnavailable as exc:
            if posted:  # unreachable, maybe still running it: stopped when it answers
                await pool.abandon(m, posted[-1], ctx.job_id)
            pool.take_out(m, exc.message)
            raise PromptLost(f"Backend {m.name} was unavailable: {exc.message}",
                             {"backend": m.name, "reason": "backend_down", **exc.details}) from None
        succeeded = True
        return result
    finally:
        down.cancel()
        m.ended(needs, succeeded)


async def _copy(pool: BackendPool, m: Member, copies: tuple[tuple[str, str], ...]) -> None:
    """The LoRAs/checkpoints the backend lacks, over SFTP, checked by size and hash; its listings are
    refreshed after, so the router sees them there."""
    from sidecar.backends.transfer import TransferError, copy_model

    for folder, name in copies:
        src = pool.local_file(folder, name)
        if src is None:
            raise JobFailed(f"{name} is no longer in this machine's {folder} folder; cannot copy it to {m.name}.",
                            {"backend": m.name, "folder": folder, "name": name}, code="model_transfer_failed")
        assert m.ssh is not None
        if m.fetch is not None and await m.fetch(folder, name, src):
            continue  # it fetched the file itself (a rented ComfyUI, from the [storage] bucket)
        try:
            await copy_model(m.ssh, src, folder, name, key=m.ssh_key, known_hosts=m.ssh_known_hosts)
        except TransferError as exc:
            raise JobFailed(f"Copying {name} to {m.name} ({m.ssh}) failed: {exc}",
                            {"backend": m.name, "folder": folder, "name": name}, code="model_transfer_failed") from None
        log.info("copied %s/%s to backend %s (%s)", folder, name, m.name, m.ssh)
    with contextlib.suppress(Exception):
        await pool.refresh_caps(m)
