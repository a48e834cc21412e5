"""Every onnxruntime scheme on a tiny random Llama: op counts change as intended and the model
generates; gguf_exact on a tiny GGUF written here is lossless; the genai schemes run when
``.venv-genai`` exists (``bash scripts/setup_genai.sh``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("onnx_ir")

from rkpipe.backends import get_backend  # noqa: E402
from rkpipe.backends.base import QuantizeRequest  # noqa: E402
from rkpipe.backends.ort import genai  # noqa: E402
from rkpipe.backends.ort.gguf_exact import unpermute_order  # noqa: E402
from rkpipe.config.schema import QuantConfig  # noqa: E402
from rkpipe.engines.ort_llm import OrtCausalLM  # noqa: E402
from rkpipe.io import sha256_file  # noqa: E402
from rkpipe.llm.export import export_fp32_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 2, 4, 2
LAYER_MATMULS = 7 * LAYERS  # q, k, v, o, gate, up, down
PROMPT = [17, 200, 33, 401, 5, 98, 77, 300, 12, 150, 260, 41]
Q = gguf.GGMLQuantizationType
GGUF_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def _tokenizer():
    from tokenizers import Tokenizer, models
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({ch: 3 + i for i, ch in enumerate(sorted(ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _to_gguf(model, path: Path) -> None:
    """Write the model's weights as a GGUF (Q4_1 projections, Q8_0 embedding) and set the model
    to those weights de-quantized, as acquiring a GGUF source does."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.attention.head_count", HEADS)
    writer.add_uint32("llama.attention.head_count_kv", KV_HEADS)
    state = model.state_dict()
    with torch.no_grad():
        emb = state["model.embed_tokens.weight"].numpy()
        raw = gguf.quants.quantize(emb, Q.Q8_0)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=Q.Q8_0)
        state["model.embed_tokens.weight"].copy_(
            torch.from_numpy(gguf.quants.dequantize(raw, Q.Q8_0).reshape(emb.shape))
        )
        for layer in range(LAYERS):
            for hf_name, gguf_name in GGUF_NAMES.items():
                kind = "self_attn" if "proj" in hf_name and hf_name[0] in "qkvo" else "mlp"
                key = f"model.layers.{layer}.{kind}.{hf_name}.weight"
                w = state[key].numpy()
                heads = {"q_proj": HEADS, "k_proj": KV_HEADS}.get(hf_name)
                raw = gguf.quants.quantize(_permute(w, heads) if heads else w, Q.Q4_1)
                writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", raw, raw_dtype=Q.Q4_1)
                deq = gguf.quants.dequantize(raw, Q.Q4_1).reshape(w.shape)
                if heads:
                    deq = deq[unpermute_order(w.shape[0], heads)]
                state[key].copy_(torch.from_numpy(np.ascontiguousarray(deq)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ort_schemes")
    model, tokenizer = _llama(), _tokenizer()
    _to_gguf(model, root / "tiny.gguf")
    model.save_pretrained(root / "float")
    tokenizer.save_pretrained(root / "float")
    (root / "float" / "manifest.json").write_text(
        json.dumps(
            {
                "source": "gguf",
                "path": str(root / "tiny.gguf"),
                "gguf_file": "tiny.gguf",
                "gguf_sha256": sha256_file(root / "tiny.gguf"),
            }
        )
    )
    export_fp32_onnx(root / "float", root / "onnx")
    calib = [
        {"input": "Hello there, tiny model. ", "target": "A short answer."},
        {"input": "Count: one two three ", "target": "four five six."},
    ]
    (root / "calib.json").write_text(json.dumps(calib))
    fp32 = OrtCausalLM(str(root / "onnx"), threads=1)
    return {"root": root, "fp32": fp32}


def _quantize(work: dict, name: str, dtype: str, **ort_options: object):
    quant = QuantConfig(dtype=dtype)
    for key, value in ort_options.items():
        setattr(quant.ort, key, value)
    request = QuantizeRequest(
        float_model_dir=work["root"] / "float",
        onnx_fp32_dir=work["root"] / "onnx",
        calibration_json=work["root"] / "calib.json",
        quant=quant,
        platform="host",
        out_dir=work["root"] / name,
    )
    return get_backend("onnxruntime").quantize(request)


def _generates(result) -> np.ndarray:
    model = OrtCausalLM(str(result.out_dir), threads=1)
    out = model.generate(PROMPT, 8)
    assert len(out["tokens"]) == 8 and out["decode_tok_per_s"] > 0
    logits = model.logits(PROMPT)
    assert logits.shape == (len(PROMPT), VOCAB) and np.isfinite(logits).all()
    return logits


@pytest.mark.parametrize(
    ("name", "dtype", "options", "expect"),
    [
        (
            "dyn_emb8",
            "int8",
            {"scheme": "dynamic", "embedding_bits": 8},
            {
                "matmul_integer_count": LAYER_MATMULS,
                "matmul_nbits_count": 1,
                "gather_quantized_count": 1,
            },
        ),
        (
            "nbits4_b64",
            "int4",
            {"scheme": "matmul_nbits", "block_size": 64, "accuracy_level": 4},
            {"matmul_nbits_count": LAYER_MATMULS + 1, "gather_quantized_count": 0},
        ),
        (
            "nbits4_emb4",
            "int4",
            {"scheme": "matmul_nbits", "embedding_bits": 4},
            {"matmul_nbits_count": LAYER_MATMULS + 1, "gather_quantized_count": 1},
        ),
        (
            "nbits8",
            "int8",
            {"scheme": "matmul_nbits", "embedding_bits": 8},
            {"matmul_nbits_count": LAYER_MATMULS + 1, "gather_quantized_count": 1},
        ),
        (
            "static",
            "int8",
            {"scheme": "static_qdq", "per_channel": True, "calib_records": 2},
            {"qdq_matmul_count": LAYER_MATMULS + 1},
        ),
    ],
)
def test_scheme_quantizes_every_weight_and_generates(work, name, dtype, options, expect) -> None:
    result = _quantize(work, name, dtype, **options)
    for key, value in expect.items():
        assert result.metrics[key] == value, key
    assert result.metrics["float_weight_matmul_count"] == 0
    manifest = json.loads((result.out_dir / "quant_manifest.json").read_text())
    assert manifest["scheme"] == options["scheme"] and manifest["counts"]
    logits = _generates(result)
    ref = work["fp32"].logits(PROMPT)
    assert not np.allclose(logits, ref, atol=1e-5)  # really quantized
    assert np.corrcoef(logits.ravel(), ref.ravel())[0, 1] > 0.8  # and still the same model
    if name == "static":
        assert manifest["facts"]["calib_records_used"] == 2


def test_gguf_exact_is_lossless(work) -> None:
    result = _quantize(
        work, "gguf_exact", "int4", scheme="gguf_exact", accuracy_level=0, accuracy_level_8bit=0
    )  # fp32 compute everywhere: exact up to sum order
    metrics = result.metrics
    assert metrics["gguf_matmuls"] == LAYER_MATMULS + 1 and metrics["gguf_gathers"] == 1
    assert metrics["matmul_nbits_count"] == LAYER_MATMULS + 1
    assert metrics["gguf_unused_tensors"] == 0 and metrics["gguf_max_abs_diff"] == 0.0
    assert metrics["float_weight_matmul_count"] == 0 and metrics["residual_matmul_count"] > 0
    assert result.params["gguf_file"] == "tiny.gguf"
    logits = _generates(result)
    np.testing.assert_allclose(logits, work["fp32"].logits(PROMPT), rtol=0, atol=1e-4)
    got = OrtCausalLM(str(result.out_dir), threads=1).generate(PROMPT, 12)["tokens"]
    assert got == work["fp32"].generate(PROMPT, 12)["tokens"]


def _genai_python() -> str | None:
    try:
        return genai.genai_python(str(REPO / genai.GENAI_VENV / "bin" / "python"))
    except Exception:
        return None


@pytest.mark.skipif(_genai_python() is None, reason="no .venv-genai: bash scripts/setup_genai.sh")
@pytest.mark.parametrize(
    ("scheme", "dtype"), [("genai_int4", "int4"), ("genai_gguf_exact", "int4")]
)
def test_genai_builder_graph_runs_under_plain_onnxruntime(work, scheme, dtype) -> None:
    exact = scheme == "genai_gguf_exact"
    result = _quantize(
        work,
        scheme,
        dtype,
        scheme=scheme,
        genai_python=_genai_python(),
        accuracy_level=0 if exact else 4,
        accuracy_level_8bit=0 if exact else 4,
    )
    assert result.metrics["attention_fused_count"] == LAYERS
    assert result.metrics["float_weight_matmul_count"] == 0
    assert (result.out_dir / "genai_builder.log").is_file()
    assert not (result.out_dir / ".genai_build").exists()
    logits = _generates(result)
    if exact:
        assert result.metrics["gguf_gathers"] == 1 and result.metrics["gguf_unused_tensors"] == 0
        np.testing.assert_allclose(logits, work["fp32"].logits(PROMPT), rtol=0, atol=1e-3)


def _decode_logits(model: OrtCausalLM, ids: list[int]) -> np.ndarray:
    """Logits of every position computed one token at a time (the decode path)."""
    feed_past = dict(model.empty_past)
    rows = []
    for pos, token in enumerate(ids):
        feed = model._feed(np.array([[token]], dtype=np.int64), pos)
        feed.update(feed_past)
        logits, *present = model.session.run(model._output_names, feed)
        feed_past = dict(zip(model.past_names, present, strict=True))
        rows.append(logits[0, -1])
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("genai_scheme", [False, True])
def test_gguf_folded_with_decode_branch_generates(work, genai_scheme: bool) -> None:
    """q4_1_mode=folded (no residual side branches) + decode_accuracy_level=4 (an If branch
    for one-token steps): prefill runs the fp32-compute branch, decode the int8-activation one,
    both close to the exact model."""
    scheme = "genai_gguf_exact" if genai_scheme else "gguf_exact"
    if genai_scheme and _genai_python() is None:
        pytest.skip("no .venv-genai: bash scripts/setup_genai.sh")
    extra = {"genai_python": _genai_python()} if genai_scheme else {}
    result = _quantize(
        work,
        f"{scheme}_folded_split",
        "int4",
        scheme=scheme,
        accuracy_level=0,
        accuracy_level_8bit=4,
        q4_1_mode="folded",
        decode_accuracy_level=4,
        **extra,
    )
    metrics = result.metrics
    projections = (5 if genai_scheme else 7) * LAYERS  # the builder fuses q/k/v
    assert metrics["gguf_matmuls"] == projections + 1 and metrics["gguf_unused_tensors"] == 0
    assert metrics["decode_branch_matmuls"] == projections  # 4-bit ones (lm_head is 8-bit)
    assert metrics["float_weight_matmul_count"] == 0
    manifest = json.loads((result.out_dir / "quant_manifest.json").read_text())
    assert manifest["q4_1_mode"] == "folded" and manifest["decode_accuracy_level"] == 4
    import onnx

    graph = onnx.load(str(result.out_dir / "model.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node] == ["Shape", "Equal", "If"]
    logits = _generates(result)  # prefill branch (12 tokens)
    ref = work["fp32"].logits(PROMPT)
    assert not np.allclose(logits, ref, rtol=0, atol=1e-6)  # folded: lossy ...
    np.testing.assert_allclose(logits, ref, rtol=0, atol=0.05 * np.abs(ref).max())  # ... slightly
    model = OrtCausalLM(str(result.out_dir), threads=1)
    decoded = _decode_logits(model, PROMPT)  # decode branch, token by token
    assert np.corrcoef(decoded.ravel(), ref.ravel())[0, 1] > 0.99
    assert (decoded.argmax(-1) == ref.argmax(-1)).mean() >= 0.75
