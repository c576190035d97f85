"""One damaged `jobs` row (invalid JSON in a column) is left out of the lists and logged; it never
fails `GET /jobs` for the other jobs."""

from __future__ import annotations

import logging
import sqlite3

import pytest


@pytest.mark.parametrize("column, value", [("workflow", '{"3": {'), ("params", "[1, 2"),
                                           ("params", '"text"'), ("error_details", "not json")])
async def test_a_row_with_invalid_json_is_left_out_of_the_list_and_logged(client, settings, caplog, column,
                                                                          value) -> None:
    ids = []
    for n in range(3):
        resp = await client.post("/jobs", json={"prompt": f"a cat {n}", "seed": n})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["id"])
    with sqlite3.connect(settings.data_dir / "sidecar.db") as db:
        db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, ids[1]))
    caplog.set_level(logging.ERROR, "sidecar.jobs")
    for query in ("", "?full=1", "?status=queued", "?status=succeeded"):
        resp = await client.get(f"/jobs{query}")
        assert resp.status == 200, await resp.text()
        listed = {j["id"] for j in (await resp.json())["jobs"]}
        assert ids[1] not in listed
    listed = {j["id"] for j in (await (await client.get("/jobs")).json())["jobs"]}
    assert {ids[0], ids[2]} <= listed
    assert any(ids[1] in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
    assert (await client.get(f"/jobs/{ids[0]}")).status == 200
