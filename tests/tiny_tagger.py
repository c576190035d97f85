"""A tiny WD14-style tagger built with onnx.helper, with the real taggers' interface: one NHWC float32
input `input_1:0` of shape [batch, S, S, 3] (BGR, 0-255; S = 32 here, 448 in the published ones) and
one output `predictions_sigmoid` of shape [batch, T], one sigmoid score per row of `selected_tags.csv`.

Its scores are a linear function of the mean blue, green and red of the input, so a test can tell
what the preprocessing did: a red figure padded to a white square scores `full body` (red above blue:
BGR order kept), `standing` (green at half: padding was white) and `simple background`, and the
spyke character tag at 0.88; `sitting` (0.27) and `outdoors` stay under the general threshold, and
`other_character` (0.82) under the character threshold although it is over 0.35.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 32
# name, category, (w_blue, w_green, w_red), bias: logit = w . mean(BGR)/255 + bias
TAGS = [
    ("general", 9, (0, 0, 0), 5.0),
    ("full_body", 0, (-10, 0, 10), -2.0),
    ("standing", 0, (0, 8, 0), -3.0),
    ("sitting", 0, (0, 8, 0), -5.0),
    ("simple_background", 0, (6, 0, 0), -1.0),
    ("outdoors", 0, (6, 0, 0), -4.0),
    ("^_^", 0, (0, 0, 0), -5.0),
    ("spyke_(plasma)", 4, (0, 0, 4), -2.0),
    ("other_character", 4, (0, 0, 4), -2.5),
]


def build_tagger(folder: Path, size: int = SIZE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([w for _, _, w, _ in TAGS], dtype=np.float32).T  # [3, T]
    bias = np.array([b for _, _, _, b in TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "weights"], ["logits0"]),
        helper.make_node("Add", ["logits0", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        initializer=[numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
                     numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat, _, _) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder
