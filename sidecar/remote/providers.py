"""From a request's `remote` object and the configuration to a provider and its limits.

`resolve` merges the request over the `[remote.<provider>]` table once, at submit; the result (without
the API key, which stays in the configuration) is stored with the run, so a re-attach after a restart
uses the same limits. `provider_for` builds the provider a resolved run names.
"""

from __future__ import annotations

import math
from typing import Any

from sidecar.errors import RemoteNotConfigured
from sidecar.remote.provider import Limits, Provider
from sidecar.config.remote import RemoteSettings, SshSettings, VastSettings
from sidecar.remote.wire import SshRemote, VastRemote

PROVIDERS = ("vast", "ssh")


def resolve(settings: RemoteSettings, req: VastRemote | SshRemote) -> dict[str, Any]:
    """The run's remote settings: the request's keys over the configuration's table (no API key)."""
    table = settings.vast if req.provider == "vast" else settings.ssh
    merged = table.model_dump(mode="json", exclude={"api_key"})
    merged.update({k: v for k, v in req.model_dump(exclude={"provider"}).items() if v is not None})
    merged["provider"] = req.provider
    if req.provider == "ssh" and not merged.get("host"):
        raise RemoteNotConfigured("remote provider 'ssh' needs a host: give remote.host (user@host) or set host "
                                  "in the [remote.ssh] table of the configuration.", {"field": "remote.host"})
    if req.provider == "vast":
        provider_for(settings, merged)  # the key and the SDK, checked before anything is queued
    return merged


def limits_of(resolved: dict[str, Any]) -> Limits:
    if resolved["provider"] != "vast":  # the artist's own machine: no price, no cost
        return Limits(max_price_per_hour=math.inf, max_total_cost=math.inf, max_hours=math.inf)
    return Limits(max_price_per_hour=resolved["max_price_per_hour"], max_total_cost=resolved["max_total_cost"],
                  max_hours=resolved["max_hours"], min_gpu_memory_gb=resolved["min_gpu_memory_gb"],
                  min_cuda_version=resolved["min_cuda_version"], min_reliability=resolved["min_reliability"],
                  min_disk_gb=resolved["min_disk_gb"])


def provider_for(settings: RemoteSettings, resolved: dict[str, Any]) -> Provider:
    fields = {k: v for k, v in resolved.items() if k != "provider"}
    if resolved["provider"] == "vast":
        from sidecar.remote.vast import VastProvider

        return VastProvider(VastSettings.model_validate({**fields, "api_key": settings.vast.api_key}))
    from sidecar.remote.ssh import SshProvider

    return SshProvider(SshSettings.model_validate(fields))
