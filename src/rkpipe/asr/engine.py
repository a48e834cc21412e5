"""Which engine module runs an exported ASR directory, read from its ``engine.json``.

``engine.json`` (written by :mod:`rkpipe.asr.export`) names the module under ``rkpipe.engines``:
``ort_whisper`` (encoder-decoder, KV cache) or ``ort_ctc`` (greedy CTC). Directories exported
before the key existed are Whisper ones. Deploy code pushes and runs that module on a board.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from rkpipe.asr.architectures import by_engine
from rkpipe.errors import AsrError

DEFAULT_ENGINE = "ort_whisper"  # directories exported before engine.json named one


def engine_name(model_dir: Path) -> str:
    """The engine module name (``ort_whisper`` / ``ort_ctc``) of the exported ``model_dir``.

    Raises :class:`AsrError` when ``engine.json`` is missing or unreadable or names an unknown
    engine (listing the known ones).
    """
    path = Path(model_dir) / "engine.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AsrError(f"cannot read {path}: {exc}; run the ASR export stage first") from exc
    name = info.get("engine", DEFAULT_ENGINE)
    try:
        by_engine(name)
    except AsrError as exc:
        raise AsrError(f"{path}: {exc}") from None
    return name


def load_engine(model_dir: Path, threads: int = 2) -> Any:
    """An engine instance (``OrtWhisper`` or ``OrtCtc``) for ``model_dir``.

    Raises :class:`AsrError` for an unknown engine or a missing/broken model file.
    """
    name = engine_name(model_dir)
    module = importlib.import_module(f"rkpipe.engines.{name}")
    try:
        return getattr(module, by_engine(name).engine_class)(str(model_dir), threads=threads)
    except (FileNotFoundError, ValueError) as exc:
        raise AsrError(f"cannot load the ASR model from {model_dir}: {exc}") from exc
