"""English text normalisation for WER/CER: Whisper's ``EnglishTextNormalizer``, the one the
field's published English WERs use (numbers to digits, British to American spelling,
contractions expanded, fillers and punctuation removed).

The normaliser comes from the ``openai-whisper`` package, but ``import whisper`` runs its
``__init__``, which imports torch (seconds, and evaluate's processes never need it). So the
three files of ``whisper/normalizers`` (``__init__.py``, ``basic.py``, ``english.py``, which
reads ``english.json`` beside it) are loaded as a private package of their own, found with
:func:`rkpipe.data_wheels.package_dir`, which locates the package without importing it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from rkpipe.errors import AsrError

WHISPER_PIN = "openai-whisper==20250625"
# not "whisper.normalizers": a later real ``import whisper`` must not find a half-made package
_PRIVATE_NAME = "_rkpipe_whisper_normalizers"


def normalize_text(text: str) -> str:
    """``text`` as Whisper's English normaliser leaves it, without leading/trailing spaces."""
    return english_normalizer()(text).strip()


@lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's ``EnglishTextNormalizer()``, loaded once without importing torch.

    Raises :class:`AsrError` when ``openai-whisper`` or one of the normaliser's own imports
    (``regex``, ``more_itertools``; whisper is installed with ``--no-deps``) is missing.
    """
    return _load_normalizers().EnglishTextNormalizer()


def _load_normalizers():
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    directory = _normalizers_dir()
    spec = importlib.util.spec_from_file_location(
        _PRIVATE_NAME, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise AsrError(f"cannot load Whisper's text normaliser from {directory}")
    module = importlib.util.module_from_spec(spec)
    # registered before running: the package's relative imports (.basic, .english) look it up
    sys.modules[_PRIVATE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        _forget()
        name = (exc.name or "").split(".")[0] or "a module"
        raise AsrError(
            f"Whisper's text normaliser needs {name}, which is not installed: "
            f"pip install {name.replace('_', '-')}"
        ) from exc
    return module


def _normalizers_dir() -> Path:
    from rkpipe.data_wheels import install_command, package_dir

    whisper = package_dir("whisper")
    directory = whisper / "normalizers" if whisper else None
    if directory is None or not (directory / "english.py").is_file():
        raise AsrError(
            "WER needs Whisper's text normaliser from openai-whisper, which is not installed: "
            f"{install_command(WHISPER_PIN)}"
        )
    return directory


def _forget() -> None:
    """Drop a half-loaded package so the next call retries after the install."""
    for name in [n for n in sys.modules if n == _PRIVATE_NAME or n.startswith(_PRIVATE_NAME + ".")]:
        del sys.modules[name]
