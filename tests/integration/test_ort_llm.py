"""Export, quantize, run and evaluate a tiny random Llama end to end against torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")

from rkpipe.backends import get_backend  # noqa: E402
from rkpipe.backends.base import QuantizeRequest  # noqa: E402
from rkpipe.backends.onnxruntime import MANIFEST_FILE  # noqa: E402
from rkpipe.backends.ort.graph import count_ops  # noqa: E402
from rkpipe.config.schema import QuantConfig  # noqa: E402
from rkpipe.engines import ort_llm  # noqa: E402
from rkpipe.engines.ort_llm import OrtCausalLM  # noqa: E402
from rkpipe.evaluate.llm import evaluate_llm, perplexity, token_windows  # noqa: E402
from rkpipe.llm.export import export_fp32_onnx  # noqa: E402

EOS = 2
TEXT = (
    "The quick brown fox jumps over the lazy dog. A tiny model reads this text one byte "
    "at a time, and its perplexity is checked against torch on the very same windows."
)
SEQLEN = 64
WEIGHT_MATMULS = 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the tied lm_head


def _byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<unk>": 0, "<s>": 1, "</s>": EOS}
    vocab.update({ch: 3 + i for i, ch in enumerate(sorted(ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,  # well separated logits: no near-ties in greedy decoding
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ort_llm")
    model, tokenizer = _tiny_llama(), _byte_tokenizer()
    model.save_pretrained(root / "float")
    tokenizer.save_pretrained(root / "float")
    facts = export_fp32_onnx(root / "float", root / "onnx")
    return {"root": root, "model": model, "tokenizer": tokenizer, "facts": facts}


def _quantize(work: dict, dtype: str) -> object:
    quant = QuantConfig(dtype=dtype)
    quant.ort.block_size = 32
    request = QuantizeRequest(
        float_model_dir=work["root"] / "float",
        onnx_fp32_dir=work["root"] / "onnx",
        calibration_json=work["root"] / "unused.json",
        quant=quant,
        platform="host",
        out_dir=work["root"] / dtype,
    )
    return get_backend("onnxruntime").quantize(request)


@pytest.fixture(scope="module")
def int8(work: dict) -> object:
    return _quantize(work, "int8")


def test_export_writes_graph_tokenizer_and_facts(work: dict) -> None:
    facts, onnx_dir = work["facts"], work["root"] / "onnx"
    assert facts["num_layers"] == 2 and facts["architecture"] == "LlamaForCausalLM"
    assert facts["opset"] >= 14 and facts["num_nodes"] > 0 and facts["export_s"] > 0
    for name in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (onnx_dir / name).is_file(), name
    assert not [p for p in work["root"].iterdir() if p.name.startswith(".onnx")]


def test_onnx_logits_match_torch(work: dict) -> None:
    ids = list(range(10, 40))
    with torch.no_grad():
        expected = work["model"](torch.tensor([ids])).logits[0].numpy()
    got = OrtCausalLM(str(work["root"] / "onnx"), threads=1).logits(ids)
    assert got.shape == (30, 512)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_greedy_generate_matches_torch(work: dict) -> None:
    prompt = [17, 200, 33, 401, 5, 98, 77, 300, 12, 150, 260, 41]
    with torch.no_grad():
        out = work["model"].generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
    expected = out[0, len(prompt) :].tolist()
    result = OrtCausalLM(str(work["root"] / "onnx"), threads=1).generate(prompt, 24, eos_id=EOS)
    assert result["tokens"] == expected
    assert result["prompt_tokens"] == len(prompt)
    assert result["decode_tokens"] == len(expected) - 1
    assert result["ttft_ms"] >= result["prefill_ms"] > 0


def test_int8_quantizes_every_weight_matmul(work: dict, int8) -> None:
    fp32 = count_ops(work["root"] / "onnx" / "model.onnx")
    assert fp32["float_weight_matmul_count"] == WEIGHT_MATMULS
    assert fp32["matmul_integer_count"] == 0
    assert int8.metrics["float_weight_matmul_count"] == 0
    assert int8.metrics["matmul_integer_count"] == WEIGHT_MATMULS
    assert int8.metrics["dynamic_quantize_count"] > 0
    assert int8.metrics["quantize_s"] > 0 and int8.metrics["quantize_peak_rss_mb"] > 0
    manifest = json.loads((int8.out_dir / MANIFEST_FILE).read_text())
    assert manifest["weight_type"] == "QInt8" and manifest["op_types"] == ["MatMul"]
    assert manifest["counts"]["matmul_integer_count"] == WEIGHT_MATMULS
    assert int8.artifact.is_file() and (int8.out_dir / "tokenizer.json").is_file()
    assert int8.params["backend"] == "onnxruntime" and int8.params["per_channel"] == "False"


def test_int4_uses_matmul_nbits(work: dict) -> None:
    pytest.importorskip("onnx_ir")
    result = _quantize(work, "int4")
    assert result.metrics["matmul_nbits_count"] == WEIGHT_MATMULS
    assert result.metrics["float_weight_matmul_count"] == 0
    logits = OrtCausalLM(str(result.out_dir), threads=1).logits([5, 6, 7])
    assert logits.shape == (3, 512) and np.isfinite(logits).all()


def test_evaluate_matches_torch_perplexity(work: dict, int8) -> None:
    root = work["root"]
    ids = work["tokenizer"](TEXT, add_special_tokens=False)["input_ids"]
    nll_sum, count = 0.0, 0
    for window in token_windows(ids, SEQLEN):
        with torch.no_grad():
            logits = work["model"](torch.tensor([window])).logits[0, :-1].double().numpy()
        nll_sum += len(window[1:]) * np.log(perplexity(logits, window[1:]))
        count += len(window) - 1
    torch_ppl = float(np.exp(nll_sum / count))

    same = evaluate_llm(root / "onnx", root / "onnx", TEXT, root / "float", seqlen=SEQLEN)
    assert same["ppl_float"] == pytest.approx(torch_ppl, rel=1e-3)
    assert same["eval_tokens"] == count
    assert same["kld_mean"] == pytest.approx(0.0, abs=1e-12)
    assert same["top1_agreement"] == 1.0 and same["ppl_delta_pct"] == 0.0

    quant = evaluate_llm(root / "onnx", int8.out_dir, TEXT, root / "float", seqlen=SEQLEN)
    assert quant["ppl_float"] == same["ppl_float"]
    assert quant["kld_mean"] > 0 and 0.0 <= quant["top1_agreement"] <= 1.0


def test_main_prints_one_json_line_per_run(int8) -> None:
    cmd = [sys.executable, ort_llm.__file__, "--model", str(int8.out_dir), "--threads", "1"]
    cmd += ["--prompt-tokens", "8", "--new-tokens", "5", "--warmup", "1", "--repetitions", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["warmup"], r["rep"]) for r in rows] == [(True, 0), (False, 0), (False, 1)]
    for row in rows:
        assert row["kind"] == "llm" and "tokens" not in row
        assert row["prompt_tokens"] == 8 and row["decode_tokens"] == 4
        assert row["decode_tok_per_s"] > 0 and row["ttft_ms"] > 0 and row["peak_rss_mb"] > 0
