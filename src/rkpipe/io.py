"""Atomic outputs and content hashes.

A stage writes into a temporary sibling and renames it into place, so a killed
stage never leaves a half file (or half directory) under the final name that DVC
or a user could mistake for a good artifact.

A temporary is named after its owner, ``.<name>.<host>-<pid>.<random>.tmp``, so that the next
writer of the same output removes the leftovers of a writer killed with SIGKILL (whose
``finally`` never ran; one such leftover held 626 MB): see :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkpipe.processes import boot_time, host_token, pid_alive


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
    left as it was. Leftovers of killed writers of ``final`` are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    prefix = f".{final.name}.{host_token()}-{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        _replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        # A directory cannot be renamed over a non-empty one: move the old one aside first,
        # into our own temporary, so a kill between the two renames leaves it where the
        # next writer's cleanup finds it (never a stray ``.<name>.old`` that nobody owns).
        old = src.parent / ".old"
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


# A legacy temporary (``.<name>.<random>.tmp`` or ``.<name>.old``, written before temporaries
# named their owner) is removed when nothing in it changed since the machine booted, or for a
# day: only a concurrent writer running an older rkpipe could still own it, no stage goes a
# day without writing into its temporary, and if one did, it fails loudly at its rename
# instead of leaving a wrong file.
LEGACY_IDLE_S = 24 * 3600


def remove_stale_temporaries(final: Path | str) -> list[Path]:
    """Remove the temporaries of ``final`` whose writer is dead; return what was removed.

    An owned temporary (``.<name>.<host>-<pid>.<random>.tmp``) is stale when it was made on
    this host by a pid that no longer runs; one whose pid is alive is a concurrent writer and
    is kept, and one from another host (a shared file system) is never judged.
    """
    final = Path(final)
    owned = re.compile(rf"\.{re.escape(final.name)}\.([A-Za-z0-9_-]+)-(\d+)\.[a-z0-9_]+\.tmp")
    legacy = re.compile(rf"\.{re.escape(final.name)}\.([a-z0-9_]{{8}}\.tmp|old)")
    try:
        names = os.listdir(final.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        path = final.parent / name
        match = owned.fullmatch(name)
        if match:
            stale = match.group(1) == host_token() and not pid_alive(int(match.group(2)))
        else:
            stale = bool(legacy.fullmatch(name)) and _idle_since_boot_or_a_day(path)
        if stale:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _idle_since_boot_or_a_day(path: Path) -> bool:
    """Whether nothing under ``path`` changed since boot, or for :data:`LEGACY_IDLE_S`."""
    boot = boot_time()
    limit = max(time.time() - LEGACY_IDLE_S, boot or 0.0)
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for top, dirs, files in os.walk(path):
            paths += [Path(top, n) for n in dirs + files]
    for item in paths:
        with contextlib.suppress(OSError):
            if item.lstat().st_mtime >= limit:
                return False
    return True


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
