"""CTC decoding, engine selection, scheme/config validation and bad ASR inputs (no exports here)."""

from __future__ import annotations

import ast
import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from rkpipe.asr.calibration import CALIB_SENTENCES, calibration_sentences
from rkpipe.asr.engine import engine_name
from rkpipe.asr.evaluate import load_testset, normalize_text
from rkpipe.asr.quantize import file_scheme, quantize_asr
from rkpipe.asr.rknn import build_steps
from rkpipe.calibration.feeds import FeedsReader
from rkpipe.config.schema import AsrConfig, AsrInitConfig, AsrQuantConfig, AsrRknnConfig
from rkpipe.engines.ort_ctc import ctc_greedy, ids_to_text, normalize
from rkpipe.errors import AsrError, CalibrationError, ConfigError

SR = 16000
VOCAB = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "|",
    "E",
    "T",
    "A",
    "O",
    "N",
    "I",
    "H",
    "S",
    "R",
    "D",
    "L",
]


def _one_hot(labels: list[int], vocab: int = len(VOCAB)) -> np.ndarray:
    logits = np.full((len(labels), vocab), -5.0, np.float32)
    logits[np.arange(len(labels)), labels] = 3.0
    return logits


def test_ctc_greedy_collapses_repeats_and_drops_blanks():
    # H H E <pad> L L <pad> L O -> H E L L O (the blank keeps the double L)
    h, e, ll, o = (VOCAB.index(c) for c in "HELO")
    assert ctc_greedy(_one_hot([h, h, e, 0, ll, ll, 0, ll, o]), blank_id=0) == [h, e, ll, ll, o]
    assert ctc_greedy(_one_hot([0, 0, 0]), blank_id=0) == []
    assert ctc_greedy(np.zeros((0, 5), np.float32), blank_id=0) == []


def test_ids_to_text_maps_delimiter_and_drops_specials():
    ids = [VOCAB.index(c) for c in "THE|"] + [1, 3] + [VOCAB.index(c) for c in "|STAR|"]
    assert ids_to_text(ids, VOCAB, "|", {0, 1, 2, 3}) == "THE STAR"


def test_normalize_matches_wav2vec2_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    audio = (0.3 * np.sin(np.arange(8000) / 7.0) + 0.05).astype(np.float32)
    expected = Wav2Vec2FeatureExtractor(do_normalize=True)(audio, sampling_rate=SR).input_values[0]
    np.testing.assert_allclose(normalize(audio), expected, atol=1e-5)


def test_rknn_worker_is_stdlib_only():
    from rkpipe.asr import rknn_worker

    tree = ast.parse(Path(rknn_worker.__file__).read_text(encoding="utf-8"))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top - set(sys.stdlib_module_names) == set()  # rknn.api / numpy: inside functions


# --------------------------------------------------------------------------- engine selection


def test_engine_name_reads_engine_json(tmp_path):
    with pytest.raises(AsrError, match="run the ASR export stage"):
        engine_name(tmp_path)
    (tmp_path / "engine.json").write_text(json.dumps({"architecture": "whisper"}))
    assert engine_name(tmp_path) == "ort_whisper"  # exports from before the key existed
    (tmp_path / "engine.json").write_text(json.dumps({"engine": "ort_ctc"}))
    assert engine_name(tmp_path) == "ort_ctc"
    (tmp_path / "engine.json").write_text(json.dumps({"engine": "ort_rnnt"}))
    with pytest.raises(AsrError, match="known engines: ort_ctc, ort_whisper"):
        engine_name(tmp_path)


# --------------------------------------------------------------------------- architectures


def test_unsupported_architecture_errors_name_the_supported_ones(tmp_path):
    from rkpipe.asr.export import export_fp32_onnx
    from rkpipe.asr.model import acquire_asr

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "conformer"}))
    with pytest.raises(AsrError, match=r"'conformer'.*registered: wav2vec2, whisper"):
        export_fp32_onnx(tmp_path / "m", tmp_path / "out")
    with pytest.raises(AsrError, match=r"'conformer'.*registered: wav2vec2, whisper"):
        acquire_asr(AsrConfig(architecture="conformer"), tmp_path / "acq")
    assert not (tmp_path / "out").exists() and not (tmp_path / "acq").exists()


def test_quantize_rejects_unknown_architecture_in_engine_json(tmp_path):
    (tmp_path / "engine.json").write_text(json.dumps({"architecture": "conformer"}))
    with pytest.raises(
        AsrError, match="'conformer' is not registered; registered: wav2vec2, whisper"
    ):
        quantize_asr(tmp_path, tmp_path / "q", AsrQuantConfig())


def test_random_wav2vec2_checks_its_dimensions():
    from rkpipe.asr.ctc import random_wav2vec2

    with pytest.raises(AsrError, match="vocab_size must be 32"):
        random_wav2vec2(AsrInitConfig(), 0)
    with pytest.raises(AsrError, match="divisible"):
        random_wav2vec2(AsrInitConfig(vocab_size=32, d_model=60, conv_pos_groups=16), 0)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("asr.quant.scheme=int3", "allowed: dynamic, static_qdq, matmul_nbits4"),
        ("asr.quant.encoder_scheme=fp8", "asr.quant.encoder_scheme='fp8'"),
        ("asr.quant.block_size=48", "allowed: 16, 32, 64, 128, 256"),
        ("asr.quant.calibrate_method=Magic", "allowed: MinMax, Entropy, Percentile"),
        ("asr.architecture=conformer", "allowed: wav2vec2, whisper"),
        ("asr.backend=tflite", "allowed: onnxruntime, rknn"),
    ],
)
def test_config_validation_names_allowed_values(repo_root, override, message):
    from rkpipe.config import compose

    with pytest.raises(ConfigError, match=message):
        compose(repo_root / "conf", [override])


def test_every_asr_conf_option_composes(repo_root):
    from rkpipe.config import compose

    for path in sorted((repo_root / "conf" / "asr").glob("*.yaml")):
        cfg = compose(repo_root / "conf", [f"asr={path.stem}"])
        assert cfg.asr.architecture in ("whisper", "wav2vec2"), path.name


def test_quantize_config_errors_before_any_work(tmp_path):
    with pytest.raises(AsrError, match="scheme must be one of"):
        quantize_asr(tmp_path, tmp_path / "q", AsrQuantConfig(scheme="int3"))
    with pytest.raises(AsrError, match="op_types is empty"):
        quantize_asr(tmp_path, tmp_path / "q", AsrQuantConfig(op_types=[]))


def test_encoder_scheme_overrides_only_the_encoder():
    q = AsrQuantConfig(scheme="matmul_nbits4", encoder_scheme="dynamic")
    assert file_scheme("encoder_model.onnx", q) == "dynamic"
    assert file_scheme("model.onnx", q) == "dynamic"  # wav2vec2: the whole model is the encoder
    assert file_scheme("decoder_model.onnx", q) == "matmul_nbits4"
    assert file_scheme("decoder_model.onnx", AsrQuantConfig()) == "dynamic"


# --------------------------------------------------------------------------- calibration


def test_calibration_sentences_are_not_the_eval_sentences(repo_root):
    eval_text = (repo_root / "data" / "asr" / "sentences.txt").read_text(encoding="utf-8")
    eval_set = {normalize_text(line) for line in eval_text.splitlines() if line.strip()}
    assert not eval_set & {normalize_text(s) for s in CALIB_SENTENCES}
    assert calibration_sentences(None, 3) == list(CALIB_SENTENCES[:3])
    with pytest.raises(AsrError, match="must be positive"):
        calibration_sentences(None, 0)


def test_feeds_reader_follows_the_reader_protocol():
    reader = FeedsReader([{"x": 1}, {"x": 2}])
    assert [reader.get_next(), reader.get_next(), reader.get_next()] == [{"x": 1}, {"x": 2}, None]
    reader.rewind()
    assert reader.get_next() == {"x": 1}
    with pytest.raises(CalibrationError, match="no calibration inputs"):
        FeedsReader([])


def test_rknn_steps_follow_the_documented_call_sequence(tmp_path):
    spec = {
        "model": tmp_path / "encoder_model.onnx",
        "input": "input_features",
        "shape": [1, 80, 3000],
    }
    files = {
        "dataset": tmp_path / "dataset.txt",
        "inputs": [tmp_path / "a.npy"],
        "outputs": [tmp_path / "a.out.npy"],
    }
    fp16 = build_steps(spec, AsrRknnConfig(), files, tmp_path / "encoder.rknn")
    assert [s["op"] for s in fp16] == [
        "config",
        "load_onnx",
        "build",
        "export_rknn",
        "init_runtime",
        "inference",
    ]
    assert fp16[0]["kwargs"]["mean_values"] is None and fp16[0]["kwargs"]["std_values"] is None
    assert fp16[1]["kwargs"]["input_size_list"] == [[1, 80, 3000]]
    assert fp16[2]["kwargs"] == {"do_quantization": False, "dataset": None}
    int8 = build_steps(
        spec, AsrRknnConfig(do_quantization=True, simulate=False), files, tmp_path / "encoder.rknn"
    )
    assert int8[2]["kwargs"] == {"do_quantization": True, "dataset": str(files["dataset"])}
    assert [s["op"] for s in int8][-1] == "export_rknn"


# --------------------------------------------------------------------------- bad input


def _write_wav(path: Path, rate: int = SR, seconds: float = 0.5, width: int = 2) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(bytes(int(rate * seconds) * width))


def _transcripts(directory: Path, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (directory / "transcripts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_transcripts_not_matching_the_audio_list_are_named(tmp_path):
    _write_wav(tmp_path / "a.wav")
    _transcripts(tmp_path, [{"audio": "a.wav", "text": "A."}, {"audio": "b.wav", "text": "B."}])
    with pytest.raises(AsrError, match=r"missing files \['b.wav'\]"):
        load_testset(tmp_path)
    _transcripts(tmp_path, [{"audio": "a.wav", "text": "A."}, {"audio": "a.wav", "text": "A."}])
    with pytest.raises(AsrError, match=r"listed twice \['a.wav'\]"):
        load_testset(tmp_path)


def test_malformed_or_empty_transcripts_are_named(tmp_path):
    _write_wav(tmp_path / "a.wav")
    _transcripts(tmp_path, ['{"audio": "a.wav"}'])
    with pytest.raises(AsrError, match=r"transcripts.jsonl:1: expected"):
        load_testset(tmp_path)
    _transcripts(tmp_path, [{"audio": "a.wav", "text": " ?! "}])
    with pytest.raises(AsrError, match="transcript of a.wav is empty"):
        load_testset(tmp_path)
    (tmp_path / "transcripts.jsonl").unlink()
    with pytest.raises(AsrError, match="synthesize the test set first"):
        load_testset(tmp_path)


def test_24bit_audio_is_a_clear_error_naming_the_file(tmp_path):
    _write_wav(tmp_path / "deep.wav", width=3)
    _transcripts(tmp_path, [{"audio": "deep.wav", "text": "Deep."}])
    with pytest.raises(AsrError, match=r"cannot read audio .*deep\.wav.*16-bit"):
        load_testset(tmp_path)


def test_44k1_audio_is_resampled(tmp_path):
    _write_wav(tmp_path / "cd.wav", rate=44100, seconds=1.0)
    _transcripts(tmp_path, [{"audio": "cd.wav", "text": "CD."}])
    [(_, audio, _)] = load_testset(tmp_path)
    assert len(audio) == SR
