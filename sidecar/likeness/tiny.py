"""A tiny random likeness model with CCIP's interface, for the demo and the tests (no download).

`model_feat.onnx`: `input` [N, 3, 384, 384] float32 -> `output` [N, 768], like CCIP's; here the
image's colours averaged over a 4x4 grid, through a seeded random projection. `model_metrics.onnx`:
`input` [N, 768] -> `output` [N, N], here (1 - cosine similarity) / 2 of every pair (0 for the same
image). `metrics.json` holds the `threshold` this tiny model's differences are judged by; it means
nothing about real characters: images of the same colours in the same places come out alike.
Built with onnx.helper (the `onnx` package: the engine extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sidecar.errors import EngineUnavailable
from sidecar.likeness.ccip import FEATURE_FILE, METRIC_FILE, METRICS_JSON, SIZE

TINY_MODEL = "ccip-tiny"
FEATURES = 768
GRID = 4
TINY_THRESHOLD = 0.01


def make_tiny_likeness(models_dir: Path, seed: int = 0) -> Path:
    """Write `<models_dir>/likeness/ccip-tiny/` and answer the folder."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise EngineUnavailable("Making the tiny likeness model needs the onnx package: "
                                "pip install -e '.[engine]'") from None
    folder = models_dir / "likeness" / TINY_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((3 * GRID * GRID, FEATURES)).astype(np.float32)
    pool = SIZE // GRID

    def save(graph: object, name: str) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, folder / name)

    feat = helper.make_graph(
        [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "proj"], ["output"])],
        "tiny_ccip_feat",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", FEATURES])],
        initializer=[numpy_helper.from_array(proj, "proj")])
    save(feat, FEATURE_FILE)
    metric = helper.make_graph(
        [helper.make_node("ReduceL2", ["input"], ["norm"], axes=[1], keepdims=1),
         helper.make_node("Max", ["norm", "eps"], ["safe"]),
         helper.make_node("Div", ["input", "safe"], ["unit"]),
         helper.make_node("Transpose", ["unit"], ["unit_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["unit", "unit_t"], ["cos"]),
         helper.make_node("Sub", ["one", "cos"], ["gap"]),
         helper.make_node("Mul", ["gap", "half"], ["output"])],
        "tiny_ccip_metrics",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", "batch"])],
        initializer=[numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "eps"),
                     numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
                     numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")])
    save(metric, METRIC_FILE)
    (folder / METRICS_JSON).write_text(json.dumps({"threshold": TINY_THRESHOLD, "tiny": True,
                                                   "note": "random weights from `sidecar models make-tiny`"}) + "\n")
    return folder
