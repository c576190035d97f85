"""POST /backends/rent with wrong input: strict types as POST /jobs ("0.5" is not a price, true not a number of
hours), and a table's rule that the request breaks answered in the request's words (the camelCase field and
the rule), never pydantic's report; nothing is rented. No vast.ai is reached: each is refused first."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sidecar.api.app import create_app
from tests.scripted_backend import ScriptedBackend
from tests.test_backends_rented import settings_for


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    nowhere = SimpleNamespace(url="http://127.0.0.1:9")  # a vast.ai that is never asked
    return await aiohttp_client(create_app(settings_for(tmp_path, nowhere), ScriptedBackend()))


@pytest.mark.parametrize(("body", "field"), [
    ({"maxPricePerHour": "0.5"}, "maxPricePerHour"),
    ({"maxHours": True}, "maxHours"),
    ({"idleMinutes": "3"}, "idleMinutes"),
    ({"tags": "gpu"}, "tags"),
    ({"name": "../../etc"}, "name"),
    ({"name": "a\u0000b"}, "name"),
    ({"name": "x" * 5000}, "name"),
    ({"tags": ["t" * 1000]}, "tags"),
    ({"profile": "nope"}, "profile"),
])
async def test_wrong_input_is_a_clear_invalid_field_and_nothing_is_rented(client, body, field) -> None:
    resp = await client.post("/backends/rent", json=body)
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "invalid_field", answer
    assert answer["error"]["details"]["field"] == field
    message = answer["error"]["message"]
    assert message.startswith(f"{field}: ") and "validation error" not in message and "[type=" not in message
    assert (await (await client.get("/backends")).json())["rentals"] == []


async def test_a_whole_number_is_a_price(client) -> None:
    # A JSON 1 for a float field is the number 1 (strict floats take integers); refused here only by the
    # table's own rule, not as a wrong type.
    resp = await client.post("/backends/rent", json={"maxPricePerHour": 1, "name": "x" * 40})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["details"]["field"] == "name", answer
