"""Calibration audio for static (QDQ) quantization and the NPU converter: never the eval clips.

The clips are synthesized with espeak-ng + sox (as the test set, :mod:`rkpipe.asr.testset`) from
:data:`CALIB_SENTENCES`, which share no sentence with ``data/asr/sentences.txt`` (a test checks
it), or from the file ``asr.quant.calib_sentences``. From the clips come the model inputs each
ONNX file sees at inference:

* Whisper encoder: log-mel features (``input_features``);
* Whisper ``decoder_model.onnx``: the prompt plus the calibration sentence's tokens (teacher
  forcing) with the fp32 encoder's hidden states;
* Whisper ``decoder_with_past_model.onnx``: one feed per teacher-forced step with the fp32 KV
  cache of the steps before;
* wav2vec2 ``model.onnx``: the normalised waveform (``input_values``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from rkpipe.errors import AsrError

logger = logging.getLogger(__name__)

CALIB_SENTENCES = (
    "Bring the blue folder to the meeting on the second floor.",
    "The river was quiet after the storm had passed.",
    "She counted forty two birds sitting on the fence.",
    "Our team will test the new board next Tuesday.",
    "Please write your name at the top of the page.",
    "The baker sold every loaf before noon.",
    "A cold wind blew across the empty parking lot.",
    "He fixed the old radio with a small screwdriver.",
    "Turn the volume down while the baby is sleeping.",
    "Fresh snow covered the mountain road this morning.",
    "The museum opens at ten and closes at six.",
    "They planted tomatoes and beans in the garden.",
)


def calibration_sentences(sentences_file: str | None, count: int) -> list[str]:
    """The first ``count`` sentences of ``sentences_file`` (or :data:`CALIB_SENTENCES`).

    Raises :class:`AsrError` for a missing/empty file or a non-positive ``count``.
    """
    from rkpipe.asr.testset import read_sentences

    if count <= 0:
        raise AsrError(f"asr.quant.calib_clips must be positive, got {count}")
    sentences = read_sentences(Path(sentences_file)) if sentences_file else list(CALIB_SENTENCES)
    if len(sentences) < count:
        logger.warning("only %d calibration sentences for %d clips", len(sentences), count)
    return sentences[:count]


def synthesize_calibration(sentences: list[str], out_dir: Path) -> list[tuple[str, Any, str]]:
    """Speak ``sentences`` into ``out_dir`` and load them: ``[(name, 16 kHz audio, text)]``.

    Raises :class:`AsrError` if espeak-ng/sox are missing (with the apt-get command).
    """
    from rkpipe.asr.evaluate import load_testset
    from rkpipe.asr.testset import synthesize_testset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "calib_sentences.txt"
    text_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    # clean clips only: calibration sees the speech the model will mostly get, not the test
    # set's noisy and tempo-changed variants (which would also change the calibration bytes)
    synthesize_testset(text_file, out_dir / "clips", variants=("clean",))
    return load_testset(out_dir / "clips")


def calibration_clips(sentences_file: str | None, count: int) -> list[tuple[str, Any, str]]:
    """Synthesize ``count`` calibration clips in a temporary directory; see the module doc."""
    sentences = calibration_sentences(sentences_file, count)
    with tempfile.TemporaryDirectory(prefix="rkpipe-asr-calib-") as tmp:
        return synthesize_calibration(sentences, Path(tmp))


# --------------------------------------------------------------------------- feeds


def calibration_feeds(fp32_dir: Path, clips: list) -> dict[str, list[dict]]:
    """``{onnx file name: [feed dict, ...]}`` for every ONNX file static quantization calibrates.

    ``fp32_dir`` is the fp32 export (its ``engine.json`` says the architecture). Raises
    :class:`AsrError` for an unknown engine or unreadable model.
    """
    from rkpipe.asr.architectures import by_engine
    from rkpipe.asr.engine import engine_name, load_engine

    engine = load_engine(Path(fp32_dir), threads=2)
    architecture = by_engine(engine_name(Path(fp32_dir)))
    return architecture.calibration_feeds(engine, Path(fp32_dir), clips)
