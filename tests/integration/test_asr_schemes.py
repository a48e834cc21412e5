"""Every quantization scheme on both architectures: the graph really changed, outputs stay close.

Tiny seeded random models (Whisper d_model 64, 2+2 layers; wav2vec2 hidden 64, 2 layers).
Tolerances (cosine similarity with fp32 on synthetic tone clips; measured values in brackets):

* Whisper encoder hidden states > 0.999 for every scheme (int8 1.0000, QDQ 0.999999,
  int4 0.99997);
* Whisper first-step logits > 0.99 for int8 schemes (0.9997-0.9998) and > 0.98 for int4
  (0.9901);
* wav2vec2 logits > 0.99 for int8 schemes and > 0.98 for int4;
* re-tied vs untied int8 decoder logits over 8 teacher-forced positions > 0.9995 (0.99986).

static_qdq calibrates on synthesized speech, so it needs espeak-ng and sox (CI installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave

import numpy as np
import pytest

from rkpipe.asr.engine import load_engine
from rkpipe.asr.export import export_fp32_onnx
from rkpipe.asr.model import acquire_asr
from rkpipe.asr.quantize import quantize_asr
from rkpipe.config.schema import AsrConfig, AsrInitConfig, AsrQuantConfig
from rkpipe.engines import ort_ctc

pytestmark = pytest.mark.integration

SR = 16000
HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
NEEDS_TTS = pytest.mark.skipif(
    not HAVE_TTS,
    reason="espeak-ng/sox missing (apt-get install -y "
    "espeak-ng sox); static_qdq calibrates on synthesized speech",
)
MG = ["MatMul", "Gather"]
SCHEMES = {
    "dynamic": AsrQuantConfig(),
    "dynamic_untied": AsrQuantConfig(tie_embedding=False),
    "dynamic_u8_per_channel": AsrQuantConfig(weight_type="QUInt8", per_channel=True),
    "dynamic_gather": AsrQuantConfig(op_types=MG),
    "static_qdq": AsrQuantConfig(scheme="static_qdq", calib_clips=2),
    "nbits4": AsrQuantConfig(scheme="matmul_nbits4", op_types=MG, block_size=32),
    "nbits4_dec_int8_enc": AsrQuantConfig(scheme="matmul_nbits4", encoder_scheme="dynamic"),
    "nbits8": AsrQuantConfig(scheme="matmul_nbits8", accuracy_level=4),
    "nbits8_untied": AsrQuantConfig(scheme="matmul_nbits8", accuracy_level=4, tie_embedding=False),
}
MARK = {"dynamic": "MatMulInteger", "static_qdq": "matmul_qdq", "matmul_nbits4": "MatMulNBits",
        "matmul_nbits8": "MatMulNBits"}  # fmt: skip
# weight MatMuls per file: 12 in the encoder, 20 + LM head in the first-step decoder, 16 + LM head
# with past (cross-attention K/V come from the cache), both branches in the merged file
WHISPER_MATMULS = {
    "encoder_model.onnx": 12,
    "decoder_model.onnx": 21,
    "decoder_with_past_model.onnx": 17,
    "decoder_model_merged.onnx": 38,
}
CTC_MATMULS = {"model.onnx": 14}  # 2 x (q, k, v, out, ffn in, ffn out) + feature proj + lm_head
CTC_INIT = AsrInitConfig(
    d_model=64,
    encoder_layers=2,
    attention_heads=2,
    ffn_dim=256,
    vocab_size=32,
    conv_dim=64,
    conv_pos_kernel=16,
    conv_pos_groups=4,
)


def _params(schemes: dict) -> list:
    return [
        pytest.param(k, marks=NEEDS_TTS) if v.scheme == "static_qdq" else k
        for k, v in schemes.items()
    ]


def _clip(seed: int, seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    tone = sum(
        rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(3)
    )
    return (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _build(root, cfg: AsrConfig) -> dict:
    acquire_asr(cfg, root / "model")
    export_fp32_onnx(root / "model", root / "fp32")
    out = {}
    for name, q in SCHEMES.items():
        if q.scheme == "static_qdq" and not HAVE_TTS:
            continue
        out[name] = quantize_asr(root / "fp32", root / name, q)
    return out


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    return root, _build(root, AsrConfig())


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctc")
    cfg = AsrConfig(name="w2v-tiny", architecture="wav2vec2", init=CTC_INIT)
    return root, _build(root, cfg)


def _tolerance(name: str) -> float:
    return 0.98 if SCHEMES[name].scheme == "matmul_nbits4" else 0.99


# --------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("name", _params(SCHEMES))
def test_whisper_every_weight_matmul_is_quantized(whisper, name):
    _, results = whisper
    q, ops = SCHEMES[name], results[name]["ops"]
    assert set(ops) == set(WHISPER_MATMULS)
    for file, expected in WHISPER_MATMULS.items():
        scheme = q.encoder_scheme if q.encoder_scheme and file == "encoder_model.onnx" else q.scheme
        assert ops[file]["matmul_const_fp32"] == 0, file
        assert ops[file]["matmul_quantized"] == expected, file
        assert ops[file][MARK[scheme]] == expected, (file, scheme)


@pytest.mark.parametrize("name", _params(SCHEMES))
def test_ctc_every_weight_matmul_is_quantized(ctc, name):
    _, results = ctc
    q, ops = SCHEMES[name], results[name]["ops"]["model.onnx"]
    scheme = q.encoder_scheme or q.scheme
    assert ops["matmul_const_fp32"] == 0 and ops["matmul_quantized"] == CTC_MATMULS["model.onnx"]
    assert ops[MARK[scheme]] == CTC_MATMULS["model.onnx"]


def test_tied_embedding_keeps_one_int8_copy(whisper):
    root, results = whisper
    size = {name: r["size_mb"] for name, r in results.items()}
    # untied (the seed's graph): fp32 embedding table + int8 LM-head copy, bigger than fp32
    assert results["dynamic_untied"]["size_ratio"] > 1.0
    assert results["dynamic"]["size_ratio"] < 0.30  # re-tied: one int8 copy
    assert size["dynamic"] < size["dynamic_gather"] < size["dynamic_untied"]
    ops = results["dynamic"]["ops"]["decoder_model.onnx"]
    assert ops["Gather"] == results["dynamic_untied"]["ops"]["decoder_model.onnx"]["Gather"]
    assert results["nbits4"]["ops"]["decoder_model.onnx"]["GatherBlockQuantized"] == 2  # tok+pos


def test_nbits8_embedding_reads_the_8bit_lm_head(whisper):
    import onnx

    root, results = whisper
    assert results["nbits8"]["size_mb"] < results["nbits8_untied"]["size_mb"]
    for file in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        graph = onnx.load(str(root / "nbits8" / file)).graph
        names = {init.name for init in graph.initializer}
        assert "model.decoder.embed_tokens.weight" not in names, file  # the fp32 table is gone
        lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[0].endswith("_Q8")]
        assert len(lookups) == 1, file
    untied = onnx.load(str(root / "nbits8_untied" / "decoder_model.onnx")).graph
    assert "model.decoder.embed_tokens.weight" in {init.name for init in untied.initializer}


def test_nbits8_refuses_gather_before_any_work():
    from rkpipe.asr.quantizers import config_problems

    q = AsrQuantConfig(scheme="matmul_nbits8", op_types=MG)
    assert "4-bit only" in config_problems(q)[0]
    assert config_problems(AsrQuantConfig(scheme="matmul_nbits4", op_types=MG)) == []


@pytest.mark.parametrize("tied", ["dynamic", "nbits8"])
def test_tied_lookup_matches_the_untied_decoder(whisper, tied):
    root, _ = whisper
    out = {}
    for variant in (tied, f"{tied}_untied"):
        engine = load_engine(root / variant)
        hidden = engine.encode(engine.features(_clip(8)))
        sequence = engine.prompt_ids() + [440, 3060, 1029, 13]
        logits, _ = engine._first_step(hidden, sequence)
        out[variant] = logits[0]
    # the only difference: the embedding rows are read back from int8 (measured 0.99986)
    assert _cosine(out[tied], out[f"{tied}_untied"]) > 0.9995


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("name", _params(SCHEMES))
def test_whisper_quantized_outputs_close_to_fp32(whisper, name):
    root, _ = whisper
    engines = {v: load_engine(root / v) for v in ("fp32", name)}
    for seed in (0, 1):
        out = {}
        for variant, engine in engines.items():
            hidden = engine.encode(engine.features(_clip(seed)))
            logits, _ = engine._first_step(hidden, engine.prompt_ids())
            out[variant] = (hidden, logits[0, -1])
        assert not np.array_equal(out["fp32"][1], out[name][1])
        assert _cosine(out["fp32"][0], out[name][0]) > 0.999
        assert _cosine(out["fp32"][1], out[name][1]) > _tolerance(name)


@pytest.mark.parametrize(
    "name", _params({k: SCHEMES[k] for k in ("static_qdq", "nbits4", "nbits8")})
)
def test_whisper_quantized_merged_decoder_matches_split(whisper, name):
    from rkpipe.engines.ort_whisper import OrtWhisper

    root, _ = whisper
    ids = [
        OrtWhisper(str(root / name), decoder=m).transcribe_ids(_clip(3), 8)["ids"]
        for m in ("split", "merged")
    ]
    assert ids[0] == ids[1] and len(ids[0]) > 0


@pytest.mark.parametrize("name", _params(SCHEMES))
def test_ctc_quantized_logits_close_to_fp32(ctc, name):
    root, _ = ctc
    engines = {v: load_engine(root / v) for v in ("fp32", name)}
    logits = {v: e.logits(e.features(_clip(4))) for v, e in engines.items()}
    assert not np.array_equal(logits["fp32"], logits[name])
    assert _cosine(logits["fp32"], logits[name]) > _tolerance(name)


def test_ctc_engine_decode_equals_torch_argmax_decode(ctc):
    import torch
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    root, _ = ctc
    engine = load_engine(root / "fp32")
    model = Wav2Vec2ForCTC.from_pretrained(root / "model").eval()
    processor = Wav2Vec2Processor.from_pretrained(root / "model")
    for seed in (5, 6):
        audio = _clip(seed, seconds=1.5)
        inputs = processor(audio, sampling_rate=SR, return_tensors="pt").input_values
        np.testing.assert_allclose(engine.features(audio), inputs.numpy(), atol=1e-5)
        with torch.no_grad():
            best = model(inputs).logits.argmax(-1)[0].tolist()
        collapsed = [t for i, t in enumerate(best) if (i == 0 or t != best[i - 1]) and t != 0]
        got = engine.transcribe_ids(audio)
        assert got["ids"] == collapsed and len(collapsed) > 0
        # the same ids through the HF tokenizer (HF's own grouping drops specials before
        # collapsing, so "B <s> B" differs there; trained models do not emit <s>)
        expected = processor.tokenizer.decode(
            collapsed, group_tokens=False, skip_special_tokens=True
        )
        assert engine.text(got["ids"]) == " ".join(expected.split())


def test_ctc_engine_cli_prints_json_rows_like_whisper(ctc, tmp_path):
    root, _ = ctc
    wav = tmp_path / "tone.wav"
    with wave.open(str(wav), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(22050)
        handle.writeframes((_clip(7)[:22050] * 20000).astype("<i2").tobytes())
    script = shutil.copy(ort_ctc.__file__, tmp_path / "ort_ctc.py")  # pushed alone
    cmd = [
        sys.executable,
        str(script),
        "--model",
        str(root / "dynamic"),
        "--audio",
        str(wav),
        "--warmup",
        "1",
        "--repetitions",
        "2",
        "--threads",
        "2",
        "--max-new-tokens",
        "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["rep"], r["warmup"]) for r in rows] == [(0, True), (0, False), (1, False)]
    keys = {
        "kind",
        "clip",
        "rep",
        "warmup",
        "encoder_ms",
        "decoder_ms",
        "total_ms",
        "audio_s",
        "rtf",
        "ids",
        "peak_rss_mb",
    }
    assert all(keys <= set(r) and r["kind"] == "asr" and r["decoder_ms"] == 0.0 for r in rows)
    assert all(r["rtf"] > 0 and r["peak_rss_mb"] > 0 and r["audio_s"] == 1.0 for r in rows)


def test_ctc_evaluate_compares_fp32_and_quantized(ctc, tmp_path):
    from rkpipe.asr.evaluate import evaluate_asr

    root, _ = ctc
    for i in range(2):
        with wave.open(str(tmp_path / f"c{i}.wav"), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SR)
            handle.writeframes((_clip(10 + i) * 20000).astype("<i2").tobytes())
    rows = [{"audio": f"c{i}.wav", "text": f"tone number {i}"} for i in range(2)]
    (tmp_path / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = evaluate_asr(
        root / "fp32",
        root / "dynamic",
        tmp_path,
        root / "model",
        None,
        "transcribe",
        8,
        2,
        warmup=0,
    )
    assert metrics["asr_random_weights"] is True and metrics["asr_clips"] == 2
    assert metrics["asr_decoder_ms_mean"] == 0.0 and metrics["asr_host_rtf"] > 0
    assert 0.0 <= metrics["asr_token_agreement"] <= 1.0


def test_local_ctc_checkpoint_is_acquired_and_architecture_checked(ctc, tmp_path):
    from rkpipe.errors import AsrError

    root, _ = ctc
    cfg = AsrConfig(
        name="w2v-local",
        architecture="wav2vec2",
        source="local",
        path=str(root / "model"),
        random_weights=False,
    )
    manifest = acquire_asr(cfg, tmp_path / "local")
    assert manifest["architecture"] == "wav2vec2" and manifest["dims"]["hidden_size"] == 64
    assert {f["path"] for f in manifest["files"]} >= {
        "model.safetensors",
        "vocab.json",
        "preprocessor_config.json",
    }
    whisper_cfg = AsrConfig(source="local", path=str(root / "model"))
    with pytest.raises(AsrError, match="holds a 'wav2vec2' model.*asr.architecture=wav2vec2"):
        acquire_asr(whisper_cfg, tmp_path / "wrong")
