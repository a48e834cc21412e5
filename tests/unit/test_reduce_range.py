"""quant.ort.reduce_range: auto turns 7-bit weights on where u8 x s8 saturates AVX2 without
VNNI (per-channel QInt8), users can force it, the choice lands in the params, and the real
quantize_dynamic then writes weights that fit 7 bits."""

from __future__ import annotations

import numpy as np
import pytest

from rkpipe.backends.ort.reduce_range import resolve_reduce_range
from rkpipe.config.schema import OrtQuantConfig

# 2 x 255 x 127 = 64770 overflows the int16 that vpmaddubsw adds two u8 x s8 products into;
# 2 x 255 x 63 = 32130 does not.
INT16_MAX = 32767


@pytest.mark.parametrize(
    ("options", "scheme", "expected"),
    [
        ({"per_channel": True}, "dynamic", True),
        ({"per_channel": False}, "dynamic", False),
        ({"per_channel": True, "reduce_range": "false"}, "dynamic", False),
        ({"per_channel": False, "reduce_range": "true"}, "dynamic", True),
        ({"per_channel": True, "weight_type": "QUInt8"}, "dynamic", False),  # u8 x u8
        ({"per_channel": True}, "static_qdq", True),
        ({"per_channel": True, "activation_type": "QInt8"}, "static_qdq", False),  # s8 x s8
        ({"per_channel": True}, "matmul_nbits", False),
    ],
)
def test_auto_and_forced_choices(options, scheme, expected):
    on, why = resolve_reduce_range(OrtQuantConfig(**options), scheme)
    assert on is expected and why


def test_the_arithmetic_it_guards_against():
    assert 2 * 255 * 127 > INT16_MAX >= 2 * 255 * 63


def tiny_matmul(path, rows=64, cols=32):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(0, 1, (rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


@pytest.mark.parametrize("reduce_range", [False, True])
def test_quantize_dynamic_weights_fit_7_bits_with_reduce_range(tmp_path, reduce_range):
    from types import SimpleNamespace

    import onnx
    from onnx import numpy_helper

    from rkpipe.backends.ort.schemes import get_scheme

    tiny_matmul(tmp_path / "f.onnx")
    cfg = OrtQuantConfig(per_channel=True, reduce_range=str(reduce_range).lower())
    job = SimpleNamespace(cfg=cfg)  # the quantizer call reads only the ORT config
    get_scheme("dynamic").quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", job, False, None)
    model = onnx.load(str(tmp_path / "q.onnx"))
    int8 = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == 3]
    (weight,) = [a for a in int8 if a.shape == (64, 32)]  # not the per-channel zero points
    peak = int(np.abs(weight.astype(np.int32)).max())
    assert peak <= 64 if reduce_range else peak == 127
