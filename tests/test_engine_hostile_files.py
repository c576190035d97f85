"""A safetensors file from elsewhere whose header lies (not JSON, not an object, entries without offsets,
offsets that are not numbers, a shape whose size is not its bytes, a negative size, a header length past the
library's bound) is refused by the embedded engine's reader with a ValueError naming what is wrong: the
one type its callers turn into a job's clear code (model_load_failed, upscale_model_unsupported), never
a TypeError or KeyError that escapes them, and nothing allocated for a shape the bytes do not hold."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sidecar.engine.models import read_safetensors
from sidecar.engine.upscale import load_upscaler


def write(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


@pytest.mark.parametrize(("header", "data", "says"), [
    (b"\xff\xfe not json", b"", "not JSON"),
    ([1, 2], b"", "not a JSON object"),
    ({"w": 5}, b"", "not an object"),
    ({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets"),
    ({"w": {**F32, "data_offsets": ["a", 4]}}, b"\0" * 4, "data_offsets"),
    ({"w": {**F32, "shape": [1_000_000, 1_000_000]}}, b"\0" * 4, "is not the 4 bytes"),
    ({"w": {**F32, "shape": [-1]}}, b"\0" * 4, "not a list of sizes"),
    ({"w": {**F32, "shape": "1"}}, b"\0" * 4, "not a list of sizes"),
    ({"w": {**F32, "data_offsets": [0, 3]}}, b"\0" * 4, "is not the 3 bytes"),
    ({"w": {**F32, "dtype": ["F32"]}}, b"\0" * 4, "unsupported dtype"),
])
def test_a_header_that_lies_is_a_value_error_naming_it(tmp_path: Path, header, data, says) -> None:
    path = write(tmp_path / "m.safetensors", header, data)
    with pytest.raises(ValueError, match=says):
        read_safetensors(path)
    with pytest.raises(ValueError):  # the upscaler's loader turns ValueError into upscale_model_unsupported
        load_upscaler(path)


def test_a_header_length_past_the_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(150_000_100)  # sparse: a file long enough for the length it claims
    with pytest.raises(ValueError, match="a header of 150000000 bytes"):
        read_safetensors(path)


def test_a_truthful_file_still_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.safetensors", {"__metadata__": {"a": "b"}, "w": F32,
                                                "e": {"dtype": "F16", "shape": [0, 4], "data_offsets": [4, 4]}},
                 struct.pack("<f", 2.5))
    got = read_safetensors(path)
    assert got["w"].tolist() == [2.5] and tuple(got["e"].shape) == (0, 4)


@pytest.mark.parametrize("config", [
    {"_class_name": "UNet2DConditionModel", "block_out_channels": "abc", "down_block_types": 5},
    {"_class_name": "UNet2DConditionModel", "sample_size": "x", "cross_attention_dim": {"a": 1}},
])
def test_a_diffusers_folder_with_a_hostile_config_fails_model_load_failed(tmp_path: Path, config) -> None:
    import torch
    from safetensors.torch import save_file

    from sidecar.engine.models import TokenizerPlaces, load_checkpoint
    from sidecar.errors import JobFailed

    folder = tmp_path / "odd-diffusers"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    save_file({"x": torch.zeros(1)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(JobFailed) as failed:
        load_checkpoint(folder, TokenizerPlaces(tmp_path))
    assert failed.value.code == "model_load_failed" and "odd-diffusers" in failed.value.message


@pytest.mark.parametrize(("tensors", "says"), [
    ({"down": (2, 5), "up": (3, 2)}, "is not a delta"),  # in 5, the layer takes 4
    ({"down": (2, 4), "up": (3, 3)}, "is not a delta"),  # rank 2 down, 3 up
    ({"down": (2, 4), "up": (7, 2)}, "is not a delta"),  # out 7, the layer gives 3
    ({"down": (2,), "up": (3, 2)}, "not matrices"),
    ({"down": (2, 4), "up": (3, 2), "alpha": True}, "alpha"),
])
def test_a_lora_whose_shapes_do_not_fit_the_layer_is_a_value_error_and_leaves_it_untouched(tensors, says) -> None:
    import torch

    from sidecar.engine.lora import Patcher

    layer = torch.nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    given = {"lora_unet_x.lora_down.weight": torch.ones(tensors["down"]),
             "lora_unet_x.lora_up.weight": torch.ones(tensors["up"])}
    if "alpha" in tensors:
        given["lora_unet_x.alpha"] = torch.tensor([float("nan"), 1.0])
    patcher = Patcher(layer, "lora_unet_", namer=lambda m: {"lora_unet_x": m})
    with pytest.raises(ValueError, match=says):
        patcher.apply(given, 1.0)
    assert torch.equal(layer.weight, before)
