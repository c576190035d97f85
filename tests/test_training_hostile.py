"""POST /loras/train with what a hostile or careless caller sends: a sample prompt (or trigger word) that would
become more than one prompt, or carry options, in the trainers' prompt syntax (kohya's prompt file is one
prompt a line split on " --"; ai-toolkit splits each prompt on "--": `--w 4096` past the run's size) is
refused with invalid_field naming it, and no run is queued."""

from __future__ import annotations

import pytest

from tests.training_fixtures import (  # noqa: F401  (fixtures)
    backend,
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
)


@pytest.mark.parametrize("body", [
    {"samplePrompts": ["spyke_plasma_v1, portrait --n blurry"]},
    {"samplePrompts": ["fine", "spyke_plasma_v1--w 4096 --h 4096"]},
    {"samplePrompts": ["spyke_plasma_v1, portrait\n--w 4096 --h 4096 --s 1000"]},
    {"samplePrompts": ["two\rlines"]},
    {"samplePrompts": ["nul\x00"]},
    {"samplePrompts": ["--n everything"]},
    {"triggerWord": "spyke --l 30"},
    {"triggerWord": "spyke\nx"},
    {"samplePrompts": ["p"] * 17},  # bounded: at most 16
    {"samplePrompts": ["x" * 1001]},
])
async def test_a_sample_prompt_that_would_carry_trainer_options_is_refused_and_nothing_runs(
        client, dataset_dir, body) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True,
                                                   "outputName": "s", **body})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "invalid_field", answer
    assert answer["error"]["details"]["field"] in ("samplePrompts", "triggerWord") or \
        answer["error"]["details"]["field"].startswith("samplePrompts.")
    assert (await (await client.get("/loras/runs")).json())["runs"] == []


async def test_a_prompt_with_single_dashes_and_unicode_is_accepted(client, dataset_dir) -> None:
    prompts = ["spyke_plasma_v1, half-body - smiling", "spyke_plasma_v1, 東京の夜, café — rain"]
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "s",
                                                   "samplePrompts": prompts, "steps": 2, "saveEveryNSteps": 2})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["params"]["samplePrompts"] == prompts
