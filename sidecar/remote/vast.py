"""The vast.ai provider, through vast.ai's official Python SDK (`pip install vastai`; the older
`vastai-sdk` package is now only a wrapper that installs it).

The SDK is synchronous (`requests`), so every call runs in a thread. What it sends and what it reads back
is recorded in `tests/fixtures/vast/sdk-requests.json` (from the SDK's source, vastai 1.9.1): offers are
`POST /api/v0/bundles/` (gpu_ram in MB, `dph_total` the all-in $/hour), a rental is `PUT /api/v0/asks/{id}/`
answering `new_contract` (the instance id), the SSH key goes on with `POST /api/v0/instances/{id}/ssh/`,
`GET /api/v0/instances/{id}/?owner=me` answers `{"instances": row}` with `actual_status` and
`ssh_host`/`ssh_port`, `GET /api/v1/instances/` pages through them all, and `DELETE /api/v0/instances/{id}/`
destroys one. The API key goes only into the SDK (its Authorization header): never logged, never answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

from sidecar.errors import RemoteNotConfigured, RemoteUnavailable
from sidecar.remote.provider import Instance, Limits, Offer
from sidecar.config.remote import VastSettings
from sidecar.remote.shell import Endpoint, Shell

log = logging.getLogger("sidecar.remote")

SEARCH_LIMIT = 64
# The whole time of one SDK call, retries included: the SDK's own timeout is per request (120 s) and it
# retries, and its thread cannot be stopped, so the daemon stops waiting here (the run fails as
# `remote_unavailable`; a late answer is dropped).
CALL_TIMEOUT = 300.0
START_SKEW = 600.0  # seconds a start time may lie ahead of this clock (the two clocks differ a little)


def sdk_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("vastai")
    except Exception:  # not installed
        return None


class VastProvider:
    name = "vast"

    def __init__(self, settings: VastSettings):
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise RemoteNotConfigured(
                "Training on vast.ai needs its API key: set VAST_API_KEY, or api_key in the [remote.vast] table "
                "of the configuration file (console.vast.ai > Account > API keys).", {"field": "remote.vast.api_key"})
        try:
            from vastai import VastAI
        except ImportError:
            raise RemoteUnavailable("vast.ai's SDK is not installed: pip install 'plasma-sidecar[remote]' "
                                    "(or pip install vastai).", {"missing": ["vastai"]}) from None
        logging.getLogger("vastai").setLevel(logging.WARNING)  # the SDK logs at INFO to its own handler
        self.settings = settings
        self._sdk = VastAI(api_key=settings.api_key.get_secret_value(), server_url=settings.server_url.rstrip("/"),
                           retry=2, raw=True, quiet=True)

    async def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return await _in_time(what, fn, *args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise RemoteUnavailable(f"vast.ai refused to {what} (HTTP {status}): {_message(exc.response)}",
                                    {"provider": "vast", "status": status}) from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise RemoteUnavailable(f"vast.ai could not {what}: {type(exc).__name__}: {_safe(exc)}",
                                    {"provider": "vast"}) from None

    async def search(self, limits: Limits) -> list[Offer]:
        query = {
            "num_gpus": {"eq": 1},
            "gpu_ram": {"gte": limits.min_gpu_memory_gb * 1000},  # MB: a dict query is sent as is
            "dph_total": {"lte": limits.max_price_per_hour},
            "cuda_max_good": {"gte": limits.min_cuda_version},
            "reliability": {"gte": limits.min_reliability},
            "disk_space": {"gte": limits.min_disk_gb},
        }
        if limits.gpu_name:
            query["gpu_name"] = {"eq": limits.gpu_name}
        rows = await self._call("search offers", self._sdk.search_offers, query=query, order="dph_total",
                                limit=SEARCH_LIMIT, storage=limits.min_disk_gb)
        offers = [offer_from(row) for row in rows or []]
        return [o for o in offers if o is not None]

    async def create(self, offer: Offer, label: str, onstart: str | None, *, image: str | None = None,
                     env: dict[str, str] | None = None, disk_gb: float | None = None) -> Instance:
        """`image`, `env` and `disk_gb` override the training defaults (a rented ComfyUI brings its own
        image). No `-p` port is ever asked for: only SSH is reachable from outside."""
        s = self.settings
        answer = await self._call("rent the offer", self._sdk.create_instance, id=int(offer.id),
                                  image=image or s.image, disk=disk_gb or s.min_disk_gb, label=label, env=env or None,
                                  onstart_cmd=onstart, ssh=True, direct=True)
        if not isinstance(answer, dict) or not answer.get("success") or not answer.get("new_contract"):
            raise RemoteUnavailable(f"vast.ai did not rent offer {offer.id}: {_message_of(answer)}",
                                    {"provider": "vast", "offer": offer.id})
        instance_id = str(answer["new_contract"])
        public = _public_key(s.identity_file)
        if public is not None:
            await self._call("attach the SSH key", self._sdk.attach_ssh, int(instance_id), public)
        return Instance(id=instance_id, state="created", label=label, price_per_hour=offer.price_per_hour,
                        gpu_name=offer.gpu_name)

    async def status(self, instance_id: str) -> Instance:
        import requests

        try:
            row = await _in_time(f"show instance {instance_id}", self._sdk.show_instance, int(instance_id))
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return Instance(id=instance_id, state="gone")
            raise RemoteUnavailable(f"vast.ai refused to show instance {instance_id}: {_message(exc.response)}",
                                    {"provider": "vast"}) from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise RemoteUnavailable(f"vast.ai could not show instance {instance_id}: {_safe(exc)}",
                                    {"provider": "vast"}) from None
        if not row:
            return Instance(id=instance_id, state="gone")
        return instance_from(row)

    async def destroy(self, instance_id: str) -> None:
        import requests

        try:
            await _in_time(f"destroy instance {instance_id}", self._sdk.destroy_instance, int(instance_id))
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return  # already gone
            raise RemoteUnavailable(f"vast.ai refused to destroy instance {instance_id}: {_message(exc.response)}",
                                    {"provider": "vast"}) from None
        except requests.RequestException as exc:
            raise RemoteUnavailable(f"vast.ai could not destroy instance {instance_id}: {_safe(exc)}",
                                    {"provider": "vast"}) from None

    async def list_instances(self) -> list[Instance]:
        rows = await self._call("list instances", self._sdk.show_instances)
        return [instance_from(r) for r in rows or []]

    async def shell(self, instance: Instance, host_key: str | None) -> Shell:
        ep = Endpoint(instance.ssh_host or "", int(instance.ssh_port or 22), instance.ssh_user or "root",
                      self.settings.identity_file, trust_on_first_use=True)
        return await Shell.connect(ep, host_key)

    async def check(self) -> str:
        """`sidecar doctor`: the key is accepted (one cheap authenticated call)."""
        rows = await self.list_instances()
        return f"vast.ai key accepted ({len(rows)} instance(s) on the account)"


def offer_from(row: dict[str, Any]) -> Offer | None:
    """An offer row, or None for one without an id or whose price is not a price (missing, zero, negative,
    NaN, infinite): the limits compare against it, and NaN > max is false, so such an offer would pass
    every price limit (and a zero or negative one would make the cost guard count nothing)."""
    price = _price(row.get("dph_total")) if isinstance(row, dict) else None
    if price is None or price == 0 or row.get("id") is None:
        return None
    return Offer(
        id=str(row["id"]), gpu_name=str(row.get("gpu_name") or "?"), num_gpus=_int(row.get("num_gpus")) or 1,
        gpu_memory_gb=(_price(row.get("gpu_ram")) or 0) / 1000, price_per_hour=price,
        reliability=_float(row.get("reliability2", row.get("reliability"))),
        cuda_version=_float(row.get("cuda_max_good")), total_tflops=_float(row.get("total_flops")),
        disk_gb=_float(row.get("disk_space")), where=row.get("geolocation"))


def instance_from(row: dict[str, Any], now: float | None = None) -> Instance:
    """An instance row. A price that is not one reads 0 (the rental keeps the offer's price: 0 never
    replaces it); a start time that is not finite or lies ahead of this clock reads None (the rental keeps
    its own): either would otherwise make the cost so far NaN, negative or zero and blind the cost guard."""
    actual = row.get("actual_status") or row.get("cur_state") or "unknown"
    state = "running" if actual == "running" and row.get("intended_status", "running") == "running" else actual
    started = _price(row.get("start_date"))
    if started is not None and started > (time.time() if now is None else now) + START_SKEW:
        started = None
    return Instance(id=str(row["id"]), state=str(state), label=row.get("label"), ssh_host=row.get("ssh_host"),
                    ssh_port=_int(row.get("ssh_port")), price_per_hour=_price(row.get("dph_total")) or 0.0,
                    gpu_name=row.get("gpu_name"), message=row.get("status_msg"), started_at=started or None)


async def _in_time(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking SDK call in a thread, waited for at most CALL_TIMEOUT seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), CALL_TIMEOUT)
    except TimeoutError:
        raise RemoteUnavailable(f"vast.ai did not answer ({what}) within {CALL_TIMEOUT:g} s; try again later.",
                                {"provider": "vast", "timeout": CALL_TIMEOUT}) from None


def _public_key(identity: Path) -> str | None:
    pub = Path(str(Path(identity).expanduser()) + ".pub")
    try:
        return pub.read_text(encoding="utf-8").strip() or None
    except OSError:
        log.warning("no %s: the instance gets only the SSH keys of the vast.ai account", pub)
        return None


def _float(v: Any) -> float | None:
    """A finite number, or None (vast.ai's JSON is read by Python's parser, which takes NaN and Infinity)."""
    try:
        f = float(v) if v is not None and not isinstance(v, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return f if f is not None and math.isfinite(f) else None


def _price(v: Any) -> float | None:
    """A finite number at least 0 (a price, a size, a time), or None."""
    f = _float(v)
    return f if f is not None and f >= 0 else None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _message(response: Any) -> str:
    if response is None:
        return "no answer"
    try:
        body = response.json()
    except ValueError:
        return (response.text or "")[:200]
    return _message_of(body)


def _message_of(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("msg") or body.get("error") or body)[:300]
    return str(body)[:300]


def _safe(exc: Exception) -> str:
    """An exception's text without anything that could carry the key (requests puts URLs, never headers)."""
    return str(exc)[:300]
