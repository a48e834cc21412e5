"""Export an ASR checkpoint to fp32 ONNX with optimum, plus what the inference engine reads.

Whisper output directory: ``encoder_model.onnx``, ``decoder_model.onnx``,
``decoder_with_past_model.onnx``, ``decoder_model_merged.onnx`` (optimum's
``automatic-speech-recognition-with-past`` task), the configs and tokenizer files optimum copies,
``mel_filters.npy`` (``(n_mels, n_fft // 2 + 1)`` float32) and ``engine.json``. wav2vec2 (CTC):
``model.onnx`` (task ``automatic-speech-recognition``), the processor files and ``engine.json``
(see :mod:`rkpipe.asr.ctc`). ``engine.json``'s ``engine`` key names the engine module under
``rkpipe.engines`` that runs the directory (``ort_whisper`` or ``ort_ctc``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, dir_size_mb, write_json_atomic

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("whisper", "wav2vec2")
TASK = "automatic-speech-recognition-with-past"
ONNX_FILES = (
    "encoder_model.onnx",
    "decoder_model.onnx",
    "decoder_with_past_model.onnx",
    "decoder_model_merged.onnx",
)
ENGINE_FILES = ("engine.json", "mel_filters.npy")
CTC_ONNX_FILES = ("model.onnx",)


def export_fp32_onnx(model_dir: Path, out_dir: Path) -> dict:
    """Export the ASR checkpoint in ``model_dir`` to fp32 ONNX in ``out_dir`` (atomically).

    Whisper: the four ONNX files plus ``mel_filters.npy``; wav2vec2: ``model.onnx``. Both get
    ``engine.json`` (feature and decoding constants, the engine name, the ``random_weights``
    flag copied from the acquire manifest). Returns metrics: ``architecture``, ``export_s``,
    ``size_mb`` and ``files`` ({name: size_mb}). Raises :class:`AsrError` for a missing or
    unsupported checkpoint (naming the supported architectures) or a failed export.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = _read_model_config(model_dir)
    ctc = config["model_type"] == "wav2vec2"
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        if ctc:
            from rkpipe.asr.ctc import run_ctc_export, write_ctc_engine_files

            run_ctc_export(model_dir, tmp)
            write_ctc_engine_files(model_dir, tmp, _random_weights(model_dir))
        else:
            _run_optimum(model_dir, tmp)
            write_engine_files(model_dir, tmp)
            _check_outputs(tmp)
        seconds = time.perf_counter() - start
        names = CTC_ONNX_FILES if ctc else ONNX_FILES
        files = {name: round(dir_size_mb(tmp / name), 3) for name in names}
    metrics = {
        "architecture": config["model_type"],
        "export_s": round(seconds, 3),
        "size_mb": round(dir_size_mb(out_dir), 3),
        "files": files,
    }
    logger.info("exported %s to %s in %.1f s", model_dir, out_dir, seconds)
    return metrics


def _read_model_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise AsrError(f"{path} not found: acquire the ASR model first")
    config = json.loads(path.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise AsrError(
            f"cannot export ASR architecture {model_type!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return config


def _run_optimum(model_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    try:
        main_export(str(model_dir), output=out, task=TASK, device="cpu")
    except Exception as exc:  # optimum raises many unrelated types; keep the cause
        raise AsrError(f"optimum export of {model_dir} ({TASK}) failed: {exc}") from exc


def _check_outputs(out: Path) -> None:
    missing = [name for name in ONNX_FILES if not (out / name).is_file()]
    if missing:
        raise AsrError(f"optimum export did not write {missing} into {out}")


def write_engine_files(model_dir: Path, out: Path) -> dict:
    """Write ``mel_filters.npy`` and ``engine.json`` for ``rkpipe.engines.ort_whisper``.

    Reads the feature extractor, ``config.json``, ``generation_config.json`` and (if present) the
    acquire ``manifest.json`` from ``model_dir``. Returns the engine info. Raises
    :class:`AsrError` when the generation config lacks Whisper's language/task ids.
    """
    import numpy as np
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    np.save(out / "mel_filters.npy", extractor.mel_filters.T.astype(np.float32))
    info = engine_info(
        WhisperConfig.from_pretrained(model_dir),
        GenerationConfig.from_pretrained(model_dir),
        extractor,
        _random_weights(model_dir),
    )
    write_json_atomic(out / "engine.json", info)
    return info


def _random_weights(model_dir: Path) -> bool | None:
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("random_weights")


def engine_info(config: Any, gen: Any, extractor: Any, random_weights: bool | None) -> dict:
    """The constants ``engine.json`` holds (pure: built from already-loaded HF objects)."""
    keys = ("lang_to_id", "task_to_id", "no_timestamps_token_id")
    missing = [k for k in keys if getattr(gen, k, None) is None]
    if missing:
        raise AsrError(
            f"generation_config.json lacks {missing}; the engine needs Whisper's language/task "
            f"ids (re-acquire the model with rkpipe)"
        )
    return {
        "architecture": "whisper",
        "engine": "ort_whisper",
        "random_weights": random_weights,
        "n_mels": extractor.feature_size,
        "sampling_rate": extractor.sampling_rate,
        "hop_length": extractor.hop_length,
        "n_fft": extractor.n_fft,
        "chunk_length": extractor.chunk_length,
        "n_samples": extractor.n_samples,
        "nb_max_frames": extractor.nb_max_frames,
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": _first(gen.eos_token_id),
        "no_timestamps_token_id": gen.no_timestamps_token_id,
        "lang_to_id": {k.strip("<|>"): v for k, v in gen.lang_to_id.items()},
        "task_to_id": dict(gen.task_to_id),
        "suppress_tokens": list(getattr(gen, "suppress_tokens", None) or []),
        "begin_suppress_tokens": list(getattr(gen, "begin_suppress_tokens", None) or []),
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "encoder_attention_heads": config.encoder_attention_heads,
        "decoder_attention_heads": config.decoder_attention_heads,
        "d_model": config.d_model,
        "vocab_size": config.vocab_size,
        "max_target_positions": config.max_target_positions,
    }


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
