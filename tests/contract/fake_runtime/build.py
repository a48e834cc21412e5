"""Compile the fake rkllm runtime (and the fake llm_demo) with gcc, for tests and benchmarks.

Imported by path (``importlib``) from the integration fixtures and ``benchmarks/board_harness.py``,
and as ``fake_runtime.build`` from the contract tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ABI_FLAGS = {"1.2.0": ["-DRKLLM_ABI_1_2_0"], "1.2": [], "1.3": ["-DRKLLM_ABI_1_3"]}


def _gcc(args: list[str]) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: apt-get install gcc")
    out = subprocess.run([gcc, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{out.stderr}")


def build_fake_runtime(out_dir: Path, abi: str = "1.2", version: str | None = None) -> Path:
    """Compile ``librkllmrt.so`` for ``abi`` (``1.2.0``, ``1.2``, ``1.3``) into ``out_dir``.

    ``version`` overrides the version the library reports (default: 1.2.0 / 1.2.3 / 1.3.0).
    Returns the library path. Raises RuntimeError when gcc is missing or fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "librkllmrt.so"
    flags = list(ABI_FLAGS[abi])
    if version:
        flags.append(f'-DFAKE_VERSION="{version}"')
    _gcc(["-shared", "-fPIC", "-O2", "-Wall", *flags, "-o", str(lib), str(HERE / "rkllm.c")])
    return lib


def build_llm_demo(lib: Path, abi: str = "1.2") -> Path:
    """Compile the fake ``llm_demo`` next to ``lib`` (linked to it with an rpath); returns it."""
    demo = lib.parent / "llm_demo"
    _gcc(
        [
            "-O2", "-Wall", *ABI_FLAGS[abi], f"-I{HERE}", "-o", str(demo), str(HERE / "llm_demo.c"),
            f"-L{lib.parent}", "-lrkllmrt", f"-Wl,-rpath,{lib.parent}",
        ]
    )  # fmt: skip
    return demo
