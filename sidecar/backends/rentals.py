"""What the daemon keeps about the ComfyUIs it rents, in `rented-backends.json` in the data dir: each
rental's table (`BackendSpec`) and its machine (`RemoteState`: instance id, label, price, when rented, what
it cost). Written (atomically, fsynced) before the instance is created, with the label it is created
under, and again as soon as vast.ai answers with its id: a daemon killed at any point leaves enough for
the start-up reaper to find and destroy what it rented (by id, or by label in the account's list).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar import atomic
from sidecar.config.backends import BackendSpec
from sidecar.remote.state import RemoteState

log = logging.getLogger("sidecar.backends")

FILE = "rented-backends.json"
# Labels of our rented ComfyUIs (a training run's are `plasma-sidecar-run-...`, which the training reaper owns).
LABEL_PREFIX = "plasma-sidecar-comfy-"
KEEP_ENDED = 20  # destroyed or failed rentals kept for GET /backends (their final cost)


def new_label(name: str) -> str:
    return f"{LABEL_PREFIX}{name}-{secrets.token_hex(4)}"


@dataclass
class RentalRecord:
    spec: BackendSpec
    st: RemoteState

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json", exclude_unset=True), "state": self.st.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RentalRecord:
        st = RemoteState.from_dict(data["state"])
        assert st is not None
        return cls(BackendSpec.model_validate(data["spec"]), st)


class RentalStore:
    def __init__(self, data_dir: Path):
        self.path = data_dir / FILE

    def load(self) -> list[RentalRecord]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): rented instances it listed are found by label only", self.path, exc)
            return []
        out = []
        for item in raw.get("rentals", []):
            try:
                out.append(RentalRecord.from_dict(item))
            except Exception as exc:  # noqa: BLE001 - one bad record must not hide the others
                log.error("%s: a rental record is unreadable (%s); skipped", self.path, exc)
        return out

    def save(self, records: list[RentalRecord]) -> None:
        live = [r for r in records if r.st.live or r.st.state in ("searching", "creating")]
        ended = [r for r in records if r not in live][-KEEP_ENDED:]
        body = {"rentals": [r.to_dict() for r in [*ended, *live]]}
        atomic.write_text(self.path, json.dumps(body, indent=1), sync=True)


def summary(r: RentalRecord, idle_seconds: float | None) -> dict[str, Any]:
    """One rental as `GET /backends` shows it."""
    st, spec = r.st, r.spec
    return {"name": spec.name, "provider": st.provider, "state": st.state, "instanceId": st.instance_id,
            "gpu": st.gpu, "offer": st.offer, "pricePerHour": st.price_per_hour, "cost": st.cost(),
            "maxTotalCost": st.max_total_cost, "maxHours": st.max_hours, "idleMinutes": spec.idle_minutes,
            "idleSeconds": idle_seconds, "message": st.message}
