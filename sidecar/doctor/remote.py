"""The doctor's checks of remote training: vast.ai's SDK installed, its API key configured and accepted (one
authenticated call that changes nothing), the `[remote.ssh]` host reachable with kohya there. All optional:
training here needs none of them. The key itself is never printed.
"""

from __future__ import annotations

import asyncio

from sidecar.config import Settings
from sidecar.doctor.report import Check
from sidecar.errors import RemoteUnavailable, SidecarError
from sidecar.remote.shell import ConnectionLost
from sidecar.remote.vast import sdk_version

TIMEOUT = 15.0


async def check_remote(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    version = sdk_version()
    vast = settings.remote.vast
    has_key = vast.api_key is not None and bool(vast.api_key.get_secret_value())
    if version is None:
        checks.append(Check("vast.ai SDK", "warn", "the vastai package is not installed",
                            "optional, to train on a rented GPU: pip install 'plasma-sidecar[remote]'"))
    else:
        checks.append(Check("vast.ai SDK", "ok", f"vastai {version}"))
    if not has_key:
        checks.append(Check("vast.ai key", "warn", "no API key: --remote vast is not available",
                            "optional: export VAST_API_KEY=... (console.vast.ai > Account > API keys) or set "
                            "api_key in [remote.vast]"))
    elif version is not None:
        from sidecar.remote.vast import VastProvider

        try:
            detail = await asyncio.wait_for(VastProvider(vast).check(), TIMEOUT)
            checks.append(Check("vast.ai key", "ok", f"{detail} at {vast.server_url}"))
        except (SidecarError, asyncio.TimeoutError) as exc:
            checks.append(Check("vast.ai key", "warn", f"{vast.server_url}: {getattr(exc, 'message', 'no answer')}",
                                "check the key (VAST_API_KEY or [remote.vast] api_key) and the network"))
    ssh = settings.remote.ssh
    if ssh.host:
        from sidecar.remote.ssh import SshProvider

        try:
            detail = await asyncio.wait_for(SshProvider(ssh).check(), TIMEOUT)
            status = "ok" if detail.startswith("reached") and "missing" not in detail else "warn"
            checks.append(Check("SSH training host", status, detail,
                                "" if status == "ok" else "set kohya_dir and python in [remote.ssh]"))
        except RemoteUnavailable as exc:  # it answers but refuses the login: the reason names the fix
            checks.append(Check("SSH training host", "warn", exc.message, exc.details.get("fix", "")))
        except (ConnectionLost, asyncio.TimeoutError) as exc:
            checks.append(Check("SSH training host", "warn", f"{ssh.host}:{ssh.port}: {exc or 'no answer'}",
                                "check host, port, identity_file and known_hosts in [remote.ssh]"))
    return checks
