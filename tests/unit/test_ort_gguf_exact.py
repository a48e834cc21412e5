"""gguf_exact: GGUF Q4_0/Q4_1/Q8_0 blocks re-encoded into MatMulNBits bit for bit, matched by value."""

from __future__ import annotations

import json
from dataclasses import replace
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
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _raw(w: np.ndarray, qtype) -> np.ndarray:
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def _deq(raw: np.ndarray, qtype, shape) -> np.ndarray:
    return gguf.quants.dequantize(raw, qtype).reshape(shape)


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A GGUF with Q8_0 embedding, permuted Q4_1 q/k, Q4_0 v, Q4_1 MLP; returns HF-order
    float weights (the GGUF de-quantized, q/k un-permuted) keyed by role."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // N_HEAD
    shapes = {
        "token_embd.weight": ((VOCAB, HIDDEN), Q.Q8_0),
        "blk.0.attn_q.weight": ((HIDDEN, HIDDEN), Q.Q4_1),
        "blk.0.attn_k.weight": ((N_KV * head_dim, HIDDEN), Q.Q4_1),
        "blk.0.attn_v.weight": ((N_KV * head_dim, HIDDEN), Q.Q4_0),
        "blk.0.ffn_up.weight": ((FFN, HIDDEN), Q.Q4_1),
    }
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
        nodes.append(
            helper.make_node("MatMul", ["h", f"{role}_wT"], [role], name=f"/{role}/MatMul")
        )
        outputs.append(helper.make_tensor_value_info(role, TensorProto.FLOAT, None))
    nodes.append(helper.make_node("Transpose", ["embed"], ["embed_T"], perm=[1, 0], name="T"))
    nodes.append(helper.make_node("MatMul", ["h", "embed_T"], ["logits"], name="/lm_head/MatMul"))
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        outputs,
        inits,
    )
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
    assert not any(
        t.data_type == TensorProto.FLOAT and t.name.endswith("_wT") for t in model.graph.initializer
    )
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
    from rkpipe.io import sha256_file

    path = tmp_path / "m.gguf"
    write_tiny_gguf(path)
    float_dir = tmp_path / "float"
    float_dir.mkdir()
    manifest = {
        "source": "gguf",
        "path": str(path),
        "gguf_file": path.name,
        "gguf_sha256": sha256_file(path),
    }
    (float_dir / "manifest.json").write_text(json.dumps(manifest))
    assert gguf_path_from_manifest(float_dir) == path

    manifest["gguf_sha256"] = "0" * 64
    (float_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="changed"):
        gguf_path_from_manifest(float_dir)
    (float_dir / "manifest.json").write_text(json.dumps({"source": "hub", "repo_id": "a/b"}))
    with pytest.raises(ConfigError, match="needs a GGUF source"):
        gguf_path_from_manifest(float_dir)


def _q4_1_weight(seed: int = 3, shape: tuple[int, int] = (16, 1536)):
    """Q4_1 blocks of a random weight (K=1536: 48 blocks, so the folded residual spans two
    4-bit blocks, the second zero-padded) and their exact values ``d*q + m``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32) * 0.05 + 0.01
    w[0, :32] = np.linspace(0.5, 1.0, 32)  # all positive: zp clipped to 0, residual = m
    raw = _raw(w, Q.Q4_1)
    return encode_blocks(raw, "Q4_1"), _deq(raw, Q.Q4_1, shape)


def test_fold_residual_error_is_bounded_by_half_a_residual_step() -> None:
    from rkpipe.backends.ort.blocks import fold_residual, folded_weight

    weight, exact = _q4_1_weight()
    folded = fold_residual(weight)
    assert folded.residual is None and folded.k == weight.k + 64  # 48 sums padded to 2 blocks
    effective = folded_weight(weight, folded)
    err = np.abs(effective - exact).reshape(weight.n, weight.k_blocks, 32)
    assert np.ptp(err, axis=-1).max() < 1e-6  # one constant error per block: R_q - R
    # R_q is 4-bit (MSE-optimal scale) over blocks of 32 residuals: error <= half its scale,
    # or, where the largest |R| is clipped to 7 steps, <= absmax - 7 * scale (< 18 % of absmax)
    res = np.zeros((weight.n, 64), dtype=np.float32)
    res[:, : weight.k_blocks] = weight.residual
    absmax = np.repeat(np.abs(res.reshape(weight.n, 2, 32)).max(-1), 32, axis=1)
    scales = np.repeat(folded.scales[:, weight.k_blocks :], 32, axis=1)
    bound = np.maximum(scales / 2, absmax - 7 * scales)[:, : weight.k_blocks] + 1e-7
    assert (err[..., 0] <= bound).all() and (bound <= 0.18 * absmax[:, :48] + 1e-6).all()
    # and far below dropping the residual (error |r|, up to d/2)
    dropped = np.abs(weight.residual)
    assert err[..., 0].mean() < 0.15 * dropped.mean()
    assert err.max() < 0.2 * np.abs(exact).max() / 15  # well under one Q4_1 step


def test_folded_matmulnbits_computes_x_times_effective_weight() -> None:
    from rkpipe.backends.ort.blocks import fold_residual, folded_weight
    from rkpipe.backends.ort.nbits import NBitsRewriter

    weight, exact = _q4_1_weight(seed=5, shape=(24, 576))
    x = np.random.default_rng(0).standard_normal((1, 3, 576)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wT"], ["y"], name="/proj/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 576])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ascontiguousarray(exact.T), "wT")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rewriter = NBitsRewriter(model, accuracy_level=0, residual_mode="folded")
    node = model.graph.node[0]  # planned by identity: keep the wrapper alive
    rewriter.matmul(node, weight)
    rewriter.apply()
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMul", "Concat", "MatMulNBits"]  # block sums, [x, sums], one weight op
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    effective = folded_weight(weight, fold_residual(weight))
    np.testing.assert_allclose(y, x @ effective.T, rtol=0, atol=2e-4)
    assert not np.allclose(effective, exact, rtol=0, atol=1e-7)  # lossy, but close:
    dropped = replace(weight, residual=None).dequantize()  # what no residual at all gives
    assert np.abs(y - x @ exact.T).mean() < 0.2 * np.abs(x @ dropped.T - x @ exact.T).mean()


def test_residual_free_never_worse_than_dropping_the_residual() -> None:
    from rkpipe.backends.ort.gguf_exact import residual_free

    weight, exact = _q4_1_weight(seed=7, shape=(32, 256))
    free = residual_free(weight)
    assert free.residual is None and free.zero_points is not None
    blocks = (weight.n, weight.k_blocks, 32)
    sse = ((free.dequantize() - exact) ** 2).reshape(blocks).sum(-1)
    sse_dropped = 32 * weight.residual**2
    assert (sse <= sse_dropped * (1 + 1e-5) + 1e-12).all()
    assert sse.sum() < 0.9 * sse_dropped.sum()


def test_quantize_mse_beats_rtn() -> None:
    from rkpipe.backends.ort.blocks import quantize_mse, quantize_rtn

    w = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32)
    mse, rtn = quantize_mse(w, 4, 32), quantize_rtn(w, 4, 32)
    err = lambda q: float(((q.dequantize() - w) ** 2).sum())  # noqa: E731
    assert err(mse) < 0.9 * err(rtn) and mse.zero_points is None


@pytest.mark.parametrize("mode", ["folded", "mse"])
def test_apply_gguf_exact_lossy_modes_stay_close(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path)
    model = _toy_graph(hf)
    ids = np.array([[3, 17, 95, 0, 42]], dtype=np.int64)
    expected = _run(model, ids)
    report = apply_gguf_exact(model, load_gguf_weights(path), q4_1_mode=mode, embedding_bits=4)
    assert report.matmuls == 5 and report.gathers == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 5 and "Add" not in ops  # no residual side branches
    assert ops.count("Concat") == (1 if mode == "folded" else 0) + 1  # + the Gather's shape
    bits = {
        n.name: next(a.i for a in n.attribute if a.name == "bits")
        for n in model.graph.node
        if n.domain == "com.microsoft"
    }
    assert set(bits.values()) == {4}  # the Q8_0 embedding / lm_head re-quantized to 4 bits
    for got, want in zip(_run(model, ids), expected, strict=True):
        assert not np.allclose(got, want, rtol=0, atol=1e-6)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.97
    with pytest.raises(ValueError, match="q4_1_mode"):
        apply_gguf_exact(_toy_graph(hf), load_gguf_weights(path), q4_1_mode="nope")


def test_split_decode_branch_gives_one_token_steps_their_own_level(tmp_path: Path) -> None:
    from rkpipe.backends.ort.decode_split import branch_nodes, split_decode_branch

    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path)
    model = _toy_graph(hf)
    apply_gguf_exact(model, load_gguf_weights(path), accuracy_level=0, q4_1_mode="folded")
    prefill_ids, decode_ids = np.array([[3, 17, 95, 0, 42]]), np.array([[17]])
    before = [_run(model, ids) for ids in (prefill_ids, decode_ids)]
    size = sum(t.ByteSize() for t in model.graph.initializer)
    n_nodes = len(model.graph.node)

    assert split_decode_branch(model, 4, input_name="ids") == 4  # the 4-bit Q4_1/Q4_0 ones
    assert [n.op_type for n in model.graph.node] == ["Shape", "Equal", "If"]
    assert sum(t.ByteSize() for t in model.graph.initializer) < size + 100  # weights shared

    def levels(branch: str) -> set[int]:
        return {
            next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
            for n in branch_nodes(model.graph, branch)
            if n.op_type == "MatMulNBits"
            and next(a.i for a in n.attribute if a.name == "bits") == 4
        }

    assert levels("then_branch") == {4} and levels("else_branch") == {0}
    assert len(branch_nodes(model.graph)) == n_nodes
    # prefill runs the unchanged branch (bit for bit), decode the int8-activation one (close)
    for got, want in zip(_run(model, prefill_ids), before[0], strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_run(model, decode_ids), before[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * np.abs(want).max() + 1e-3)
    with pytest.raises(ValueError, match="subgraphs"):
        split_decode_branch(model, 4, input_name="ids")
