"""gguf_exact: GGUF Q4_0/Q4_1/Q8_0 blocks re-encoded into MatMulNBits bit for bit, matched by value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rkpipe.backends.ort.gguf_exact import (  # noqa: E402
    apply_gguf_exact,
    encode_blocks,
    gguf_path_from_manifest,
    load_gguf_weights,
    unpermute_order,
)
from rkpipe.errors import BackendError, ConfigError  # noqa: E402

Q = gguf.GGMLQuantizationType
N_HEAD, N_KV, HIDDEN, VOCAB, FFN = 4, 2, 64, 96, 96


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def _raw(w: np.ndarray, qtype) -> np.ndarray:
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def _deq(raw: np.ndarray, qtype, shape) -> np.ndarray:
    return gguf.quants.dequantize(raw, qtype).reshape(shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A GGUF with Q8_0 embedding, permuted Q4_1 q/k, Q4_0 v, Q4_1 MLP; returns HF-order
    float weights (the GGUF de-quantized, q/k un-permuted) keyed by role."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // N_HEAD
    shapes = {"token_embd.weight": ((VOCAB, HIDDEN), Q.Q8_0),
              "blk.0.attn_q.weight": ((HIDDEN, HIDDEN), Q.Q4_1),
              "blk.0.attn_k.weight": ((N_KV * head_dim, HIDDEN), Q.Q4_1),
              "blk.0.attn_v.weight": ((N_KV * head_dim, HIDDEN), Q.Q4_0),
              "blk.0.ffn_up.weight": ((FFN, HIDDEN), Q.Q4_1)}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.attention.head_count", N_HEAD)
    writer.add_uint32("llama.attention.head_count_kv", N_KV)
    hf = {}
    for name, (shape, qtype) in shapes.items():
        w = rng.standard_normal(shape).astype(np.float32) * 0.1 + 0.02
        if name == "blk.0.ffn_up.weight":
            w[0, :32] = 0.25  # a constant block: d == 0
            w[1, :32] = np.linspace(1.0, 2.0, 32)  # all positive: zp clipped to 0
        n_head = {"blk.0.attn_q.weight": N_HEAD, "blk.0.attn_k.weight": N_KV}.get(name)
        stored = llama_permute(w, n_head) if n_head else w
        raw = _raw(stored, qtype)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        deq = _deq(raw, qtype, shape)
        hf[name] = deq[unpermute_order(shape[0], n_head)] if n_head else deq
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_encode_blocks_is_bit_exact(qtype: str) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 128)).astype(np.float32) * 0.05 - 0.01
    w[0, :32] = 0.0
    w[1, 32:64] = 3.0
    raw = _raw(w, Q[qtype])
    weight = encode_blocks(raw, qtype)
    assert (weight.n, weight.k, weight.bits) == (8, 128, 8 if qtype == "Q8_0" else 4)
    np.testing.assert_array_equal(weight.dequantize(), _deq(raw, Q[qtype], w.shape))
    if qtype == "Q4_1":
        assert weight.zero_points.max() <= 15 and weight.residual is not None
    else:
        assert weight.zero_points is None and weight.residual is None


def test_unpermute_order_inverts_llama_permutation() -> None:
    w = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)
    for n_head in (1, 2, 4):
        np.testing.assert_array_equal(llama_permute(w, n_head)[unpermute_order(32, n_head)], w)


def _toy_graph(hf: dict[str, np.ndarray]):
    """embed -> q, k, v, up projections (optimum layout: B = W.T initializers) -> tied lm_head."""
    emb = hf["token_embd.weight"]
    inits = [numpy_helper.from_array(emb, "embed")]
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["h"], name="/embed/Gather")]
    outputs = []
    for role in ("attn_q", "attn_k", "attn_v", "ffn_up"):
        w = hf[f"blk.0.{role}.weight"]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{role}_wT"))
        nodes.append(helper.make_node("MatMul", ["h", f"{role}_wT"], [role], name=f"/{role}/MatMul"))
        outputs.append(helper.make_tensor_value_info(role, TensorProto.FLOAT, None))
    nodes.append(helper.make_node("Transpose", ["embed"], ["embed_T"], perm=[1, 0], name="T"))
    nodes.append(helper.make_node("MatMul", ["h", "embed_T"], ["logits"], name="/lm_head/MatMul"))
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info(
        "ids", TensorProto.INT64, ["b", "s"])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, ids: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})


def test_apply_gguf_exact_replaces_every_weight_losslessly(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path)
    weights = load_gguf_weights(path)
    assert set(weights.weights) == set(hf)  # the F32 norm is not a block tensor
    model = _toy_graph(hf)
    ids = np.array([[3, 17, 95, 0, 42]], dtype=np.int64)
    expected = _run(model, ids)

    report = apply_gguf_exact(model, weights)
    assert report.as_dict()["gguf_matmuls"] == 5 and report.gathers == 1
    assert not report.unmatched_matmuls and not report.unused_tensors
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 5 and ops.count("GatherBlockQuantized") == 1
    assert "Gather" not in ops and "Transpose" not in ops
    assert not any(t.data_type == TensorProto.FLOAT and t.name.endswith("_wT")
                   for t in model.graph.initializer)
    qweights = [t.name for t in model.graph.initializer if t.name.endswith(".qweight")]
    assert len(qweights) == 5  # embedding and lm_head share one table
    for got, want in zip(_run(model, ids), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_apply_gguf_exact_rejects_a_model_not_made_from_the_gguf(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path)
    other = {k: v + 1e-3 for k, v in hf.items()}
    with pytest.raises(BackendError, match="no weight MatMul"):
        apply_gguf_exact(_toy_graph(other), load_gguf_weights(path))


def test_gguf_path_from_manifest(tmp_path: Path) -> None:
    from rkpipe.hub import sha256_file

    path = tmp_path / "m.gguf"
    write_tiny_gguf(path)
    float_dir = tmp_path / "float"
    float_dir.mkdir()
    manifest = {"source": "gguf", "path": str(path), "gguf_file": path.name,
                "gguf_sha256": sha256_file(path)}
    (float_dir / "manifest.json").write_text(json.dumps(manifest))
    assert gguf_path_from_manifest(float_dir) == path

    manifest["gguf_sha256"] = "0" * 64
    (float_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="changed"):
        gguf_path_from_manifest(float_dir)
    (float_dir / "manifest.json").write_text(json.dumps({"source": "hub", "repo_id": "a/b"}))
    with pytest.raises(ConfigError, match="needs a GGUF source"):
        gguf_path_from_manifest(float_dir)
