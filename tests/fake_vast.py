"""A fake vast.ai REST server on a local port, driven by the real `vastai` SDK (its `server_url` option).

Written from the SDK's source (vastai 1.9.1: `vastai/api/offers.py`, `instances.py`, `keys.py`,
`data/offer.py`, `data/instance.py`); what the SDK sends and what it reads back is recorded in
`tests/fixtures/vast/sdk-requests.json`, and every request is logged here so tests can compare. Offers
are filtered with the SDK's query operators (`eq`, `gte`, `lte`, ...) and sorted by its `order`; a rented
instance is `loading` for a few status reads, then `running` with `ssh_host`/`ssh_port` of its own
`FakeHost` (an in-process asyncssh server). The instance's onstart script is kept but not run: the fake
installs kohya (the fake trainer) and writes the ready marker the script would write. Destroying an
instance stops its host and kills everything started on it; `lose` makes one vanish as a host failure
would. `on_running(instance_id, host)`: what else the container starts once it runs (a stand-in ComfyUI
on its internal port, for a rented ComfyUI). Errors: a wrong key is 401, an unknown or `refuse_create` offer 400 with the API's
`{"success": false, "error", "msg"}` body, an unknown instance `{"instances": null}` on show and 404 on delete.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fake_ssh_host import FakeHost, install_ai_toolkit, install_kohya

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vast" / "sdk-requests.json"
QUERY_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}


def offer(id: int, gpu: str, gpu_gb: float, price: float, *, reliability: float = 0.995, cuda: float = 12.4,
          tflops: float = 35.0, disk: float = 100.0, **extra: Any) -> dict[str, Any]:
    """An offer row as `/bundles/` answers (the fields of the SDK's `data/offer.py` the fake uses)."""
    row = {"id": id, "ask_contract_id": id, "machine_id": 1000 + id, "host_id": 2000 + id, "num_gpus": 1,
           "gpu_name": gpu, "gpu_ram": int(gpu_gb * 1000), "gpu_total_ram": int(gpu_gb * 1000),
           "cuda_max_good": cuda, "dph_base": round(price * 0.9, 4), "dph_total": price, "reliability": reliability,
           "reliability2": reliability, "total_flops": tflops, "disk_space": disk, "inet_down": 800.0,
           "inet_up": 500.0, "geolocation": "Sweden, SE", "verification": "verified", "verified": True,
           "external": False, "rentable": True, "rented": False, "hosting_type": 1, "score": 100.0}
    row.update(extra)
    return row


DEFAULT_OFFERS = [
    offer(101, "RTX 3060", 12, 0.09, tflops=12.7),  # too little memory
    offer(102, "RTX 4090", 24, 0.39, tflops=82.6),
    offer(103, "RTX 3090", 24, 0.22, tflops=35.6),
    offer(104, "A100 SXM4", 80, 1.20, tflops=19.5),  # over the price
    offer(105, "RTX 3090", 24, 0.18, tflops=35.6, reliability=0.91),  # unreliable
]


def _matches(row: dict[str, Any], field: str, ops: Any) -> bool:
    if not isinstance(ops, dict):
        return True
    value = row.get(field)
    for op, want in ops.items():
        if op == "eq" and value != want:
            return False
        if op == "neq" and value == want:
            return False
        if value is None and op in ("gt", "gte", "lt", "lte"):
            return False
        if op == "gt" and not value > want or op == "gte" and not value >= want:
            return False
        if op == "lt" and not value < want or op == "lte" and not value <= want:
            return False
        if op == "in" and value not in want or op == "notin" and value in want:
            return False
    return True


class FakeVast:
    def __init__(self, root: Path, api_key: str, trainer_env: dict[str, str] | None = None,
                 offers: list[dict[str, Any]] | None = None, loading_reads: int = 2):
        self.root = root
        self.api_key = api_key
        self.trainer_env = trainer_env or {}
        self.offers = [dict(o) for o in (offers if offers is not None else DEFAULT_OFFERS)]
        self.loading_reads = loading_reads
        self.instances: dict[int, dict[str, Any]] = {}
        self.hosts: dict[int, FakeHost] = {}
        self.onstart: dict[int, str] = {}
        self.reads: dict[int, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.destroyed: list[int] = []  # by DELETE
        self.lost: list[int] = []  # by `lose`
        self.refuse_create = False
        self.delay = 0.0  # seconds before each answer
        self.refuse_destroy = False  # DELETE answers 500 (vast.ai having a bad minute)
        self.on_running = None  # async (instance id, FakeHost) -> None: the image's services start
        self.next_id = 7835610  # the SDK's docstring example id
        self.runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle
    async def start(self) -> FakeVast:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/api/v0/bundles/", self.bundles)
        app.router.add_put("/api/v0/asks/{id}/", self.create)
        app.router.add_post("/api/v0/instances/{id}/ssh/", self.attach_ssh)
        app.router.add_get("/api/v0/instances/{id}/", self.show)
        app.router.add_put("/api/v0/instances/{id}/", self.update)
        app.router.add_delete("/api/v0/instances/{id}/", self.destroy)
        app.router.add_get("/api/v1/instances/", self.list)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> list[int]:
        """Stop the server; returns the instances still alive (which it then stops)."""
        alive = self.alive()
        for host in self.hosts.values():
            await host.close()
        if self.runner is not None:
            await self.runner.cleanup()
        return alive

    def alive(self) -> list[int]:
        return sorted(i for i in self.instances if i not in self.destroyed and i not in self.lost)

    @web.middleware
    async def _record(self, request: web.Request, handler):
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append({"method": request.method, "path": request.path,
                              "query": sorted(request.query.keys()), "json": body})
        auth = request.headers.get("Authorization", "")
        self.auth_headers.append(auth)
        if self.delay:
            await asyncio.sleep(self.delay)  # a vast.ai that answers late (or never)
        if auth != f"Bearer {self.api_key}":
            return web.json_response({"success": False, "error": "auth_error", "msg": "Invalid user key"},
                                     status=401)
        return await handler(request)

    # -- offers
    async def bundles(self, request: web.Request) -> web.Response:
        q = await request.json()
        rows = [o for o in self.offers
                if all(_matches(o, k, v) for k, v in q.items() if k not in QUERY_KEYS)]
        for field, direction in reversed(q.get("order") or []):
            rows.sort(key=lambda r: r.get(field) or 0, reverse=direction == "desc")
        if q.get("limit"):
            rows = rows[: int(q["limit"])]
        return web.json_response({"offers": rows})

    # -- instances
    async def create(self, request: web.Request) -> web.Response:
        ask = int(request.match_info["id"])
        body = await request.json()
        found = next((o for o in self.offers if o["id"] == ask), None)
        if found is None or self.refuse_create:
            return web.json_response({"success": False, "error": "no_such_ask",
                                      "msg": f"Instance type {ask} is no longer available."}, status=400)
        instance_id = self.next_id
        self.next_id += 1
        self.onstart[instance_id] = body.get("onstart") or ""
        self.instances[instance_id] = {
            "id": instance_id, "machine_id": found["machine_id"], "host_id": found["host_id"],
            "actual_status": "loading", "intended_status": "running", "cur_state": "running",
            "next_state": "running", "image_uuid": body.get("image"), "label": body.get("label"),
            "num_gpus": 1, "gpu_name": found["gpu_name"], "gpu_ram": found["gpu_ram"],
            "cuda_max_good": found["cuda_max_good"], "dph_total": found["dph_total"], "disk_space": body.get("disk"),
            "ssh_host": None, "ssh_port": None, "public_ipaddr": "127.0.0.1", "status_msg": "Pulling image",
            "extra_env": [[k, v] for k, v in (body.get("env") or {}).items()], "onstart": body.get("onstart"),
            "start_date": time.time(), "reliability2": found["reliability2"],
        }
        home = self.root / f"instance-{instance_id}"
        self.hosts[instance_id] = FakeHost(home, [], f"vast-{instance_id}", self.trainer_env)
        self.reads[instance_id] = 0
        return web.json_response({"success": True, "new_contract": instance_id, "instance_api_key": "ik-unused"})

    async def attach_ssh(self, request: web.Request) -> web.Response:
        instance_id = int(request.match_info["id"])
        if instance_id not in self.alive():
            return web.json_response({"success": False, "error": "no_such_instance"}, status=404)
        self.hosts[instance_id].authorize((await request.json())["ssh_key"])
        return web.json_response({"success": True, "msg": "SSH key added to instance."})

    async def _advance(self, instance_id: int) -> None:
        """A few reads in `loading`, then the container runs: host up, kohya installed, marker written."""
        row = self.instances[instance_id]
        self.reads[instance_id] += 1
        if row["actual_status"] == "loading" and self.reads[instance_id] > self.loading_reads:
            host = self.hosts[instance_id]
            await host.start()
            # What the onstart script installs: ai-toolkit when it clones it, else kohya.
            if "ai-toolkit" in self.onstart.get(instance_id, ""):
                _, python = install_ai_toolkit(host.home)
                (host.home / ".plasma-ai-toolkit-ready").write_text(f"{python}\n")
            else:
                _, python = install_kohya(host.home)
                (host.home / ".plasma-kohya-ready").write_text(f"{python}\n")
            if self.on_running is not None:
                await self.on_running(instance_id, host)
            row.update(actual_status="running", ssh_host="127.0.0.1", ssh_port=host.port, status_msg="success")

    async def show(self, request: web.Request) -> web.Response:
        instance_id = int(request.match_info["id"])
        if instance_id not in self.alive():
            return web.json_response({"instances": None})
        await self._advance(instance_id)
        return web.json_response({"instances": self.instances[instance_id]})

    async def update(self, request: web.Request) -> web.Response:
        instance_id = int(request.match_info["id"])
        body = await request.json()
        if instance_id not in self.alive():
            return web.json_response({"success": False, "error": "no_such_instance"}, status=404)
        if "label" in body:
            self.instances[instance_id]["label"] = body["label"]
        return web.json_response({"success": True})

    async def destroy(self, request: web.Request) -> web.Response:
        instance_id = int(request.match_info["id"])
        if self.refuse_destroy:
            return web.json_response({"success": False, "error": "server_error", "msg": "Try again later."},
                                     status=500)
        if instance_id not in self.alive():
            return web.json_response({"success": False, "error": "no_such_instance",
                                      "msg": "Instance not found."}, status=404)
        self.destroyed.append(instance_id)
        await self.hosts[instance_id].close()
        return web.json_response({"success": True})

    async def list(self, request: web.Request) -> web.Response:
        rows = [self.instances[i] for i in self.alive()]
        return web.json_response({"instances": rows, "next_token": None, "total_instances": len(rows)})

    # -- faults
    async def lose(self, instance_id: int) -> None:
        """The machine dies: its processes and connections go, vast.ai no longer lists it."""
        self.lost.append(instance_id)
        await self.hosts[instance_id].close()
