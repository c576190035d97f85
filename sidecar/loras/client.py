"""The daemon client plus the training routes: submit, follow, cancel and resume a run, list runs and
installed LoRAs. Runs are named by id or by output name (the newest run of that name)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sidecar.client import DaemonClient, DaemonRefused
from sidecar.statuses import RUN_TERMINAL


class TrainingClient(DaemonClient):
    async def find_run(self, ref: str) -> dict[str, Any]:
        """A run by id, or the newest run with that output name."""
        try:
            return await self.request("GET", f"/loras/{ref}/status")
        except DaemonRefused as exc:
            if exc.code != "training_not_found":
                raise
        for run in await self.runs(500):
            if run["outputName"] == ref:
                return run
        raise DaemonRefused(404, "training_not_found", f"No training run with id or output name {ref!r}.")

    async def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return (await self.request("GET", "/loras/runs", params={"limit": str(limit)}))["runs"]

    async def installed(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/loras"))["loras"]

    async def train(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", "/loras/train", json=body)

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/loras/{run_id}/cancel")

    async def resume_run(self, run_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/loras/{run_id}/resume")

    async def promote(self, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"/loras/{run_id}/promote", json=body)

    async def stage(self, run_id: str, step: int, loras_dir: str | None = None) -> dict[str, Any]:
        """Have the daemon make checkpoint `step` loadable by jobs; its answer names the `loraId`."""
        body: dict[str, Any] = {"step": step} | ({"lorasDir": loras_dir} if loras_dir else {})
        return await self.request("POST", f"/loras/{run_id}/stage", json=body)

    async def unstage(self, run_id: str, loras_dir: str | None = None) -> dict[str, Any]:
        return await self.request("POST", f"/loras/{run_id}/unstage",
                                  json={"lorasDir": loras_dir} if loras_dir else {})

    async def score_likeness(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The daemon's likeness judge on each job's image, in order (POST /likeness/score)."""
        return (await self.request("POST", "/likeness/score", json={"jobIds": job_ids}))["results"]

    async def follow_run(self, run: dict[str, Any], on_update: Callable[[dict[str, Any]], None], *,
                         poll_interval: float = 2.0) -> dict[str, Any]:
        """Poll a run until it ends (training reports every few seconds at most; polling is enough)."""
        while run["status"] not in RUN_TERMINAL:
            await asyncio.sleep(poll_interval)
            run = await self.request("GET", f"/loras/{run['id']}/status")
            on_update(run)
        return run
