"""Export an ASR checkpoint to fp32 ONNX, plus what the inference engine reads.

What is written depends on the architecture (:mod:`rkpipe.asr.architectures`): Whisper writes
optimum's encoder and decoders, ``mel_filters.npy`` and ``engine.json``; wav2vec2 (CTC) writes
``model.onnx``, the processor files and ``engine.json``. ``engine.json`` names the
architecture and the engine module under ``rkpipe.engines`` that runs the directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rkpipe.asr.architectures import get_architecture
from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, dir_size_mb

logger = logging.getLogger(__name__)


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
    architecture = get_architecture(config["model_type"])
    start = time.perf_counter()
    from rkpipe.progress import step

    with atomic_path(out_dir) as tmp:
        with step(f"exporting {config['model_type']} to ONNX"):
            architecture.export(model_dir, tmp, _random_weights(model_dir))
        seconds = time.perf_counter() - start
        files = {name: round(dir_size_mb(tmp / name), 3) for name in architecture.export_files}
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
    get_architecture(config.get("model_type"))  # raises naming the registered architectures
    return config


def _random_weights(model_dir: Path) -> bool | None:
    manifest = model_dir / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("random_weights")
