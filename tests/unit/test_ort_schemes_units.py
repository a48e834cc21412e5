"""Block packing, the shared embedding table, the static-QDQ calibration reader and the ORT
scheme options of the config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rkpipe.backends.ort.blocks import (  # noqa: E402
    BlockWeight,
    concat_rows,
    pack_codes,
    pack_zero_points,
    quantize_rtn,
    unpack_codes,
)
from rkpipe.backends.ort.embedding import quantize_tied_embedding  # noqa: E402
from rkpipe.backends.ort.static_qdq import (  # noqa: E402
    input_specs,
    make_feed,
    read_records,
)
from rkpipe.calibration.feeds import FeedsReader  # noqa: E402
from rkpipe.config.validate import validate  # noqa: E402
from rkpipe.errors import BackendError, ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_roundtrip(bits: int) -> None:
    codes = np.random.default_rng(0).integers(0, 1 << bits, size=(3, 2, 32), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 2, 32 * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)


def test_pack_zero_points_pads_odd_block_counts() -> None:
    zp = np.array([[1, 2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(pack_zero_points(zp, 4), [[0x21, 0x03]])
    np.testing.assert_array_equal(pack_zero_points(zp, 8), zp)


@pytest.mark.parametrize(("bits", "tol"), [(4, 0.08), (8, 0.005)])
def test_quantize_rtn_error_is_bounded(bits: int, tol: float) -> None:
    w = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    weight = quantize_rtn(w, bits, 32)
    assert weight.zero_points is None and weight.residual is None
    assert np.abs(weight.dequantize() - w).max() <= tol * np.abs(w).max()
    with pytest.raises(ValueError, match="multiple"):
        quantize_rtn(w[:, :40], bits, 32)


def test_concat_rows_stacks_along_n() -> None:
    a = quantize_rtn(np.ones((2, 32), dtype=np.float32), 4, 32)
    b = BlockWeight(
        a.packed.copy(),
        a.scales * 2,
        4,
        32,
        zero_points=np.full((2, 1), 3, np.uint8),
        residual=np.full((2, 1), 0.5, np.float32),
    )
    both = concat_rows([a, b])
    assert both.n == 4
    np.testing.assert_array_equal(both.dequantize(), np.vstack([a.dequantize(), b.dequantize()]))


def _tied_model(vocab: int = 80, hidden: int = 64) -> tuple:
    emb = np.random.default_rng(2).standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="/embed/Gather"),
        helper.make_node("Transpose", ["E"], ["ET"], perm=[1, 0], name="/T"),
        helper.make_node("MatMul", ["h", "ET"], ["logits"], name="/lm_head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(emb, "E")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), emb


@pytest.mark.parametrize("bits", [4, 8])
def test_tied_embedding_shares_one_quantized_table(bits: int) -> None:
    model, emb = _tied_model()
    facts = quantize_tied_embedding(model, bits, 32, accuracy_level=0)
    assert facts == {"embedding_gathers": 1, "embedding_matmuls": 1}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and ops.count("MatMulNBits") == 1
    assert "Gather" not in ops and "Transpose" not in ops
    assert [t.name for t in model.graph.initializer if t.data_type == TensorProto.UINT8] == [
        "embed.Gather.qweight"
    ]
    ids = np.array([[1, 7, 79]], dtype=np.int64)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids})[0]
    table = quantize_rtn(emb, bits, 32).dequantize()
    np.testing.assert_allclose(got, table[ids] @ table.T, rtol=0, atol=1e-4)


def _past_model() -> object:
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"]),
        helper.make_tensor_value_info(
            "past_key_values.0.key", TensorProto.FLOAT, ["b", 2, "p", "d"]
        ),
    ]
    graph = helper.make_graph([], "io", inputs, [])
    return helper.make_model(graph)


def test_calibration_feeds_match_the_export_inputs(tmp_path: Path) -> None:
    specs = input_specs(_past_model(), {"hidden_size": 64, "num_attention_heads": 4})
    feed = make_feed([5, 6, 7], specs)
    assert feed["input_ids"].tolist() == [[5, 6, 7]] and feed["input_ids"].dtype == np.int64
    assert feed["attention_mask"].tolist() == [[1, 1, 1]]
    assert feed["position_ids"].tolist() == [[0, 1, 2]]
    assert feed["past_key_values.0.key"].shape == (1, 2, 0, 16)
    reader = FeedsReader([feed, feed])
    assert reader.get_next() is feed and reader.get_next() is feed and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is feed and len(reader) == 2
    with pytest.raises(ConfigError, match="cannot build calibration input"):
        make_feed([1], {"token_type_ids": (np.int64, [None, None])})


def test_read_records_joins_input_and_target(tmp_path: Path) -> None:
    path = tmp_path / "calib.json"
    path.write_text(
        json.dumps(
            [
                {"input": "a ", "target": "b"},
                {"input": "c", "target": ""},
                {"input": "d", "target": "e"},
            ]
        )
    )
    assert read_records(path, 2) == ["a b", "c"]
    path.write_text("{}")
    with pytest.raises(BackendError, match="not a JSON list"):
        read_records(path, 2)
    with pytest.raises(BackendError, match="cannot read calibration set"):
        read_records(tmp_path / "missing.json", 2)


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (REPO / "conf" / "quant").glob("ort_*.yaml"))
)
def test_every_ort_quant_conf_composes_and_validates(name: str) -> None:
    from rkpipe.config import compose

    cfg = validate(compose(REPO / "conf", [f"quant={name}"]))
    assert cfg.quant.backend == "onnxruntime"


@pytest.mark.parametrize(
    ("ort_changes", "dtype", "source", "message"),
    [
        ({"scheme": "static_qdq"}, "int4", "package", "does not apply to quant.ort.scheme"),
        ({"scheme": "gguf_exact"}, "int4", "hub", "needs a GGUF model"),
        ({"scheme": "genai_gguf_exact"}, "int4", "local", "needs a GGUF model"),
        ({"block_size": 48}, "int4", "package", "quant.ort.block_size"),
        ({"embedding_bits": 2}, "int8", "package", "quant.ort.embedding_bits"),
        ({"scheme": "awq"}, "int4", "package", "quant.ort.scheme"),
    ],
)
def test_ort_scheme_options_are_checked(default_cfg, ort_changes, dtype, source, message) -> None:
    ort_cfg = dataclasses.replace(default_cfg.quant.ort, **ort_changes)
    quant = dataclasses.replace(default_cfg.quant, backend="onnxruntime", dtype=dtype, ort=ort_cfg)
    model = dataclasses.replace(default_cfg.model, source=source, repo_id="a/b", path="/x")
    cfg = dataclasses.replace(default_cfg, quant=quant, model=model)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)
