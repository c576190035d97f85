"""What vast.ai answers is outside input: offers whose price is NaN, infinite, negative, zero or missing (or
that have no id) are never chosen, and an instance whose price or start time is not one never makes the
cost so far NaN, negative or stuck at zero (the cost guard compares against it). Through the real SDK
against the fake vast.ai (tests/fake_vast.py), made to answer what a broken or hostile API could."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from sidecar.config.remote import VastSettings
from sidecar.remote.provider import Limits
from sidecar.remote.state import RemoteState
from sidecar.remote.vast import VastProvider
from tests import fake_vast
from tests.fake_vast import FakeVast, offer
from tests.remote_fixtures import client_key, trainer_env  # noqa: F401  (fixtures)

KEY = "vast-test-key-0123456789"


@pytest.fixture
async def vast(tmp_path: Path, trainer_env, monkeypatch):
    # The fake filters offers as vast.ai does; a broken API answers whatever it has: no filter here.
    monkeypatch.setattr(fake_vast, "_matches", lambda row, field, ops: True)
    rows = [offer(1, "RTX 4090", 24, float("nan")), offer(2, "RTX 4090", 24, -0.3), offer(3, "RTX 4090", 24, 0.0),
            offer(4, "RTX 4090", 24, float("inf")), offer(5, "RTX 4090", 24, 0.41), offer(6, "RTX 4090", 24, 0.45)]
    rows[5].pop("dph_total")
    rows.append({**offer(7, "RTX 4090", 24, 0.2), "gpu_ram": float("nan"), "num_gpus": float("inf")})
    fake = await FakeVast(tmp_path / "vast", KEY, trainer_env, offers=rows).start()
    yield fake
    await fake.close()


async def test_offers_and_instances_with_prices_that_are_not_prices_never_reach_the_limits(
        tmp_path: Path, client_key, vast) -> None:
    provider = VastProvider(VastSettings(api_key=KEY, server_url=vast.url, identity_file=client_key))
    offers = await provider.search(Limits(0.6, 3, 2, 16, 12.1, 0.98, 40))
    assert sorted(o.id for o in offers) == ["5", "7"]
    assert all(math.isfinite(o.price_per_hour) and o.price_per_hour > 0 for o in offers)
    seven = next(o for o in offers if o.id == "7")
    assert seven.gpu_memory_gb == 0 and seven.num_gpus == 1  # unreadable figures, not NaN or a crash
    inst = await provider.create(next(o for o in offers if o.id == "5"), "plasma-sidecar-test", None)
    try:
        row = vast.instances[int(inst.id)]
        st = RemoteState(provider="vast")
        st.rented(inst.id, inst.price_per_hour, now=time.time() - 3600)
        for price, start in ((float("nan"), time.time() + 10 * 86400), (-5.0, float("inf")), ("x", -1)):
            row.update(dph_total=price, start_date=start)
            seen = await provider.status(inst.id)
            assert seen.price_per_hour == 0.0 and seen.started_at is None
            st.billed(seen.started_at, seen.price_per_hour)
            cost = st.cost()
            assert math.isfinite(cost) and cost == pytest.approx(0.41, rel=0.01)  # an hour at the offer's price
    finally:
        await provider.destroy(inst.id)
