"""Vendor toolchains that live in an interpreter of their own (rkllm-toolkit, rknn-toolkit2,
onnxruntime-genai's builder): which python runs them.

Each toolchain is looked up the same way: the environment variable, else the config key, else
its setup script's venv, else this interpreter when the toolchain's module is importable here.
Symlinks are kept: a venv's python must stay that venv's python.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rkpipe.errors import BackendError, RkpipeError


@dataclass(frozen=True)
class Toolchain:
    """Where to find the interpreter of one vendor toolchain."""

    name: str  # what users call it, e.g. "rkllm-toolkit"
    env_var: str  # e.g. RKPIPE_RKLLM_PYTHON; wins over the config key
    config_key: str  # e.g. quant.rkllm.python
    module: str  # importable in the right interpreter, e.g. "rkllm.api"
    setup_hint: str  # how to create the interpreter
    venv_python: Path | None = None  # the setup script's venv, relative to the workspace
    error: type[RkpipeError] = BackendError

    def python(self, configured: str | None) -> str:
        """The interpreter to run the toolchain's worker with; raises ``self.error``."""
        from_env = os.environ.get(self.env_var)
        candidate = from_env or configured
        if candidate:
            found = shutil.which(candidate) if os.sep not in candidate else candidate
            if found and os.path.isfile(found) and os.access(found, os.X_OK):
                return os.path.abspath(found)
            source = self.env_var if from_env else self.config_key
            raise self.error(
                f"{source}={candidate!r} is not an executable interpreter; {self.setup_hint}"
            )
        if self.venv_python is not None and self.venv_python.is_file():
            return os.path.abspath(self.venv_python)
        if importable(self.module):
            return sys.executable
        venv = f", {self.venv_python} does not exist" if self.venv_python else ""
        raise self.error(
            f"{self.name} is not importable in {sys.executable}{venv} and neither "
            f"{self.env_var} nor {self.config_key} is set; {self.setup_hint}"
        )


def importable(module: str) -> bool:
    """Whether ``module`` can be imported in this interpreter (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
