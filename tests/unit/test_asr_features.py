"""The numpy Whisper front end and the offline tokenizer match transformers / openai-whisper."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from rkpipe.asr.evaluate import load_testset, normalize_text, token_agreement
from rkpipe.engines.engine_shared import read_wav, resample
from rkpipe.engines.ort_whisper import log_mel_spectrogram
from rkpipe.errors import AsrError

SR = 16000
FEATURE_ATOL = 1e-4


def _sine(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()


@pytest.mark.parametrize(
    "audio",
    [
        _sine(440, 2.5),
        _sine(1000, 31.0, amp=0.3),
        _sine(200, 1.0, amp=1e-4),
        np.zeros(8000, np.float32),
    ],
    ids=["sine-2.5s", "sine-31s-truncated", "quiet", "silence"],
)
def test_log_mel_matches_whisper_feature_extractor(extractor, audio):
    expected = extractor(audio, sampling_rate=SR, return_tensors="np").input_features[0]
    got = log_mel_spectrogram(audio, extractor.mel_filters.T.astype(np.float32))
    assert got.shape == expected.shape == (80, 3000)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=FEATURE_ATOL, rtol=0)


def test_read_wav_mixes_stereo_16bit_down_to_mono(tmp_path):
    left = (_sine(300, 0.5) * 32767).astype("<i2")
    right = np.zeros_like(left)
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(22050)
        handle.writeframes(np.stack([left, right], axis=1).tobytes())
    audio, rate = read_wav(path)
    assert rate == 22050 and audio.dtype == np.float32 and len(audio) == len(left)
    np.testing.assert_allclose(audio, left / 32768.0 / 2, atol=1e-6)


def test_read_wav_rejects_8bit(tmp_path):
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(1)
        handle.setframerate(SR)
        handle.writeframes(bytes(100))
    with pytest.raises(ValueError, match="16-bit"):
        read_wav(path)


def test_resample_44k1_to_16k_keeps_a_sine():
    out = resample(_sine(440, 1.0, sr=44100), 44100, SR)
    assert len(out) == SR and out.dtype == np.float32
    np.testing.assert_allclose(out[100:-100], _sine(440, 1.0)[100:-100], atol=1e-3)


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from rkpipe.data_wheels import find_package

    if find_package("whisper") is None:
        pytest.skip("openai-whisper not installed: bash scripts/setup.sh installs it")
    from rkpipe.asr.whisper_tokenizer import build_whisper_tokenizer

    return build_whisper_tokenizer()


def test_tokenizer_special_ids(tokenizer):
    expected = {
        "<|endoftext|>": 50257,
        "<|startoftranscript|>": 50258,
        "<|en|>": 50259,
        "<|zh|>": 50260,
        "<|su|>": 50357,
        "<|translate|>": 50358,
        "<|transcribe|>": 50359,
        "<|startoflm|>": 50360,
        "<|startofprev|>": 50361,
        "<|nospeech|>": 50362,
        "<|notimestamps|>": 50363,
        "<|0.00|>": 50364,
        "<|30.00|>": 51864,
    }
    assert len(tokenizer) == 51865
    assert {tok: tokenizer.convert_tokens_to_ids(tok) for tok in expected} == expected


def test_tokenizer_matches_openai_whisper_ids(tokenizer):
    # ids of openai/whisper-tiny's greedy output on LibriSpeech (transformers' Whisper tests)
    text = (
        " Mr. Quilter is the apostle of the middle classes and we are glad to welcome his gospel."
    )
    ids = [2221, 13, 2326, 388, 391, 307, 264, 50244, 295, 264, 2808, 5359, 293, 321, 366, 5404]
    ids += [281, 2928, 702, 14943, 13]
    assert tokenizer.encode(text, add_special_tokens=False) == ids
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize(
    "text", ["Hello, world!", "Don't  panic:\ttabs\nand 12345 digits", "Grüße 你好"]
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    prompt = [50258, 50259, 50359, 50363]
    assert tokenizer.decode(prompt + ids + [50257], skip_special_tokens=True) == text


# --------------------------------------------------------------------------- evaluation helpers


def test_normalize_text_is_whispers_english_normaliser():
    # lowercased, punctuation and quotes dropped, the contraction expanded as Whisper does
    assert normalize_text("Open the window, the kitchen's WARM!  'Quote'") == (
        "open the window the kitchen is warm quote"
    )


def test_token_agreement_counts_length_mismatch_as_disagreement():
    assert token_agreement([[1, 2, 3], []], [[1, 9, 3, 4], []]) == 0.5
    assert token_agreement([[]], [[]]) == 1.0


def _write_clip(path: Path, rate: int, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


def test_load_testset_resamples_and_checks_files(tmp_path, caplog):
    _write_clip(tmp_path / "a.wav", 8000, _sine(300, 0.5, sr=8000))
    (tmp_path / "transcripts.jsonl").write_text(
        json.dumps({"audio": "a.wav", "text": "Hi."}) + "\n"
    )
    [(name, audio, text)] = load_testset(tmp_path)
    assert (name, len(audio), text) == ("a.wav", SR // 2, "Hi.")
    assert "resampling" in caplog.text
    _write_clip(tmp_path / "extra.wav", SR, _sine(300, 0.5))
    with pytest.raises(AsrError, match="extra.wav"):
        load_testset(tmp_path)


def test_load_testset_names_empty_and_unreadable_audio(tmp_path):
    (tmp_path / "transcripts.jsonl").write_text(
        json.dumps({"audio": "a.wav", "text": "Hi."}) + "\n"
    )
    _write_clip(tmp_path / "a.wav", SR, np.zeros(0, np.float32))
    with pytest.raises(AsrError, match=r"a\.wav is empty"):
        load_testset(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"not a wav")
    with pytest.raises(AsrError, match=r"cannot read audio .*a\.wav"):
        load_testset(tmp_path)
