"""Atomic outputs and content hashes.

A stage writes into a temporary sibling and renames it into place, so a killed
stage never leaves a half file (or half directory) under the final name that DVC
or a user could mistake for a good artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it onto ``final``.

    Works for files and directories. On any exception (including KeyboardInterrupt
    and SystemExit from a signal handler) the temporary is removed and ``final`` is
    left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        _replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write ``data`` as stable, indented JSON (sorted keys, UTF-8, newline) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dir_size_mb(path: Path | str) -> float:
    """Total size of the files under ``path`` (or of ``path`` itself) in MB (10^6 bytes)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def onnx_size_mb(model_dir: Path | str) -> float:
    """Size in MB of the ONNX files (plus any external-data files) in ``model_dir``."""
    files = [p for p in Path(model_dir).iterdir() if p.suffix in (".onnx", ".onnx_data", ".data")]
    return sum(dir_size_mb(p) for p in files)
