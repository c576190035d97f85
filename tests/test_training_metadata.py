"""`read_lora_metadata` / `summary` (used by GET /loras) on a file carrying kohya's real metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sidecar.training.metadata import read_lora_metadata, summary

FIXTURE = Path(__file__).parent / "fixtures" / "kohya" / "lora-metadata.json"


def test_kohya_metadata_is_read_from_the_header_only(tmp_path) -> None:
    meta = json.loads(FIXTURE.read_text())
    path = tmp_path / "spyke.safetensors"
    save_file({"lora_unet_x.alpha": np.array(16.0, dtype=np.float32)}, str(path), metadata=meta)
    assert read_lora_metadata(path) == meta
    assert summary(meta) == {"triggerWord": "spyke_plasma_v1", "steps": 6, "networkDim": 32, "networkAlpha": 16.0,
                             "baseModel": "sd_v1", "resolution": "64x64"}


def test_trigger_phrase_wins_over_tag_counts() -> None:
    assert summary({"modelspec.trigger_phrase": "june_v1", "ss_tag_frequency": '{"a": {"x": 9}}'})["triggerWord"] \
        == "june_v1"


def test_not_a_safetensors_file(tmp_path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError):
        read_lora_metadata(bad)
    empty = tmp_path / "y.safetensors"
    save_file({"t": np.zeros(1, dtype=np.float32)}, str(empty))
    assert read_lora_metadata(empty) == {}
