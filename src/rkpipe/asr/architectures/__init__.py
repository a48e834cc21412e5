"""ASR architectures (``asr.architecture``): one module per model family, registered here.

An architecture (:class:`~rkpipe.asr.architectures.base.AsrArchitecture`) knows how to build a
random-weight model offline, which transformers classes load a checkpoint, how to export it to
ONNX, which ONNX files are quantized, which engine in :mod:`rkpipe.engines` runs the export,
what calibration feeds its files see, and which encoder rknn-toolkit2 converts. Acquire,
export, quantize, calibration, rknn and config validation ask :data:`ARCHITECTURES`; nothing
else lists the families. Listing the names imports nothing heavy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rkpipe.errors import AsrError
from rkpipe.registry import Registry

if TYPE_CHECKING:
    from rkpipe.asr.architectures.base import AsrArchitecture

ARCHITECTURES: Registry[AsrArchitecture] = Registry(
    "asr.architecture",
    {
        "whisper": "rkpipe.asr.architectures.whisper:WHISPER",
        "wav2vec2": "rkpipe.asr.architectures.wav2vec2:WAV2VEC2",
    },
    error=AsrError,
)


def get_architecture(name: str) -> AsrArchitecture:
    """The architecture registered as ``name`` (a checkpoint's ``model_type``).

    Raises :class:`AsrError` naming the registered architectures.
    """
    return ARCHITECTURES.get(name)


def by_engine(engine: str) -> AsrArchitecture:
    """The architecture whose export the engine module ``engine`` runs."""
    for name in ARCHITECTURES.names():
        architecture = ARCHITECTURES.get(name)
        if architecture.engine == engine:
            return architecture
    known = ", ".join(ARCHITECTURES.get(n).engine for n in ARCHITECTURES.names())
    raise AsrError(f"no ASR architecture runs on engine {engine!r}; known engines: {known}")


def of_export(export_dir: Path) -> AsrArchitecture:
    """The architecture of an exported directory, from its ``engine.json`` (directories
    exported before the key existed are Whisper ones).

    Raises :class:`AsrError` when ``engine.json`` is missing or names an unknown architecture.
    """
    path = Path(export_dir) / "engine.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AsrError(f"cannot read {path}: {exc}; run the ASR export stage first") from exc
    return get_architecture(info.get("architecture", "whisper"))
