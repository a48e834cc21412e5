"""Is a model file or directory intact? Checks at the door of acquisition and on later reads.

A truncated or garbled file must be named where it enters the pipeline, in one line, instead of
crashing a later stage with a library traceback. Every check here reads headers and ``stat()``
only (stdlib, no torch), so it is cheap on a multi-GB checkpoint, and never writes: a valid
model's artifacts stay byte-identical. Each problem raises the caller's error class (LLM:
ModelSourceError, ASR: AsrError) with ``"<file>: <what is wrong, expected vs got>; <fix>"``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from rkpipe.errors import ModelSourceError, RkpipeError
from rkpipe.io import sha256_file

ErrorClass = type[RkpipeError]

# safetensors' own reader refuses headers over 100 MB; a larger length means garbage bytes.
SAFETENSORS_HEADER_LIMIT = 100_000_000
SAFETENSORS_INDEX = "model.safetensors.index.json"
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
# On a later read, files up to this size are sha256-checked against the manifest (configs,
# tokenizers, tiny test models: milliseconds). Larger ones, the weights of a real model, get
# the size check plus the safetensors structure check only: hashing runs at ~150 MB/s here, so
# the 540 MB SmolLM2 float checkpoint would cost ~3.5 s on every stage that reads it.
HASH_LIMIT_BYTES = 64 * 2**20


def fail(error: ErrorClass, path: Path | str, problem: str, fix: str) -> RkpipeError:
    """The one-line error for ``path``: what is wrong, then what to do."""
    return error(f"{path}: {problem}; {fix}")


# --------------------------------------------------------------------------- safetensors


def safetensors_problem(path: Path) -> str | None:
    """Describe what is wrong with the safetensors file ``path`` (None if it is intact).

    Checks the 8-byte little-endian header length, that the header is a JSON object, that
    every tensor's ``data_offsets`` fit its dtype and shape and lie inside the file, and that
    the file ends exactly where the last tensor does (a truncated download does not).
    """
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short for a safetensors file (at least 8 expected)"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length >= SAFETENSORS_HEADER_LIMIT or length > size - 8:
            return (
                f"header length field says {length} bytes but the file has {size - 8} after "
                "it: not a safetensors file, or truncated"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"the {length}-byte safetensors header is not UTF-8 JSON: garbled or not safetensors"
    if not isinstance(header, dict):
        return "the safetensors header is not a JSON object"
    return _tensor_extent_problem(header, data_bytes=size - 8 - length, size=size, length=length)


def _tensor_extent_problem(header: dict, *, data_bytes: int, size: int, length: int) -> str | None:
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        problem = _tensor_entry_problem(info)
        if problem:
            return f"tensor {name!r}: {problem}"
        begin, stop = info["data_offsets"]
        if stop > data_bytes:
            return (
                f"tensor {name!r} ends at data byte {stop} but the file holds only "
                f"{data_bytes} bytes of tensor data: truncated"
            )
        end = max(end, stop)
    if end != data_bytes:
        expected = 8 + length + end
        return (
            f"{size} bytes, expected {expected} (8 + {length} header + {end} tensor data): "
            "extra bytes after the last tensor"
        )
    return None


def _tensor_entry_problem(info: Any) -> str | None:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        return "header entry lacks dtype/shape/data_offsets"
    offsets, shape = info["data_offsets"], info["shape"]
    if not (_ints(offsets, 2) and isinstance(shape, list) and _ints(shape, len(shape))):
        return f"bad data_offsets {offsets} or shape {shape}"
    if offsets[0] > offsets[1]:
        return f"data_offsets {offsets} end before they begin"
    itemsize = _DTYPE_BYTES.get(info["dtype"])
    count = 1
    for dim in shape:
        count *= dim
    if itemsize is not None and offsets[1] - offsets[0] != count * itemsize:
        return (
            f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, expected "
            f"{count * itemsize} for {info['dtype']} {shape}"
        )
    return None


def _ints(value: Any, n: int) -> bool:
    if not isinstance(value, list) or len(value) != n:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def check_safetensors_file(path: Path, fix: str, error: ErrorClass = ModelSourceError) -> None:
    """Raise ``error`` naming ``path`` if it is not an intact safetensors file."""
    problem = safetensors_problem(Path(path))
    if problem:
        raise fail(error, path, problem, fix)


def check_safetensors_dir(model_dir: Path, fix: str, error: ErrorClass = ModelSourceError) -> int:
    """Check every ``*.safetensors`` in ``model_dir`` and the shards its index lists.

    Returns the number of safetensors files checked (0: the checkpoint has other weights).
    """
    model_dir = Path(model_dir)
    _check_shard_index(model_dir, fix, error)
    files = sorted(model_dir.glob("*.safetensors"))
    for path in files:
        check_safetensors_file(path, fix, error)
    return len(files)


def _check_shard_index(model_dir: Path, fix: str, error: ErrorClass) -> None:
    index = model_dir / SAFETENSORS_INDEX
    if not index.is_file():
        return
    weight_map = read_json_object(index, fix, error).get("weight_map")
    if not isinstance(weight_map, dict):
        raise fail(error, index, 'no "weight_map" object (expected tensor -> shard file)', fix)
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / str(shard)).is_file():
            raise fail(
                error, model_dir / str(shard), f"shard listed in {index.name} is missing", fix
            )


# --------------------------------------------------------------------------- HF directories


def read_json_object(path: Path, fix: str, error: ErrorClass = ModelSourceError) -> dict:
    """Parse ``path`` as a JSON object, or raise ``error`` naming the file and the position."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail(error, path, "not found", fix) from None
    except OSError as exc:
        raise fail(error, path, f"cannot read ({exc.strerror})", fix) from None
    except UnicodeDecodeError as exc:
        raise fail(error, path, f"not UTF-8 (byte offset {exc.start})", fix) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise fail(error, path, f"invalid JSON at {where}: {exc.msg}", fix) from None
    if not isinstance(value, dict):
        raise fail(error, path, f"expected a JSON object, got {type(value).__name__}", fix)
    return value


def check_required_files(
    model_dir: Path, groups: tuple[tuple[str, ...], ...], fix: str, error: ErrorClass
) -> None:
    """Raise ``error`` unless ``model_dir`` holds at least one file of every group."""
    for group in groups:
        if not any((Path(model_dir) / name).is_file() for name in group):
            wanted = group[0] if len(group) == 1 else "one of " + ", ".join(group)
            raise fail(error, model_dir, f"missing {wanted}", fix)


# --------------------------------------------------------------------------- later reads


def verify_acquired(
    model_dir: Path | str, stage: str = "download_llm", error: ErrorClass = ModelSourceError
) -> None:
    """Check the acquired checkpoint in ``model_dir`` against its ``manifest.json``.

    Every listed file must exist with the recorded size; files up to HASH_LIMIT_BYTES must
    match their sha256; larger safetensors files get the structure check (see HASH_LIMIT_BYTES
    for why not a hash). ``stage`` is the stage that re-creates the directory (named in the
    fix). Raises ``error`` naming the first file that changed after acquisition.
    """
    model_dir = Path(model_dir)
    fix = f"the directory changed after {stage}; re-acquire it: dvc repro -f -s {stage}"
    manifest = read_json_object(model_dir / "manifest.json", fix, error)
    for entry in manifest.get("files") or []:
        _verify_entry(model_dir, entry, fix, error)


def _verify_entry(model_dir: Path, entry: dict, fix: str, error: ErrorClass) -> None:
    path = model_dir / entry["path"]
    expected = entry.get("size_bytes", entry.get("bytes"))
    if not path.is_file():
        raise fail(error, path, "missing (listed in manifest.json)", fix)
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise fail(error, path, f"{size} bytes, manifest.json says {expected}", fix)
    if entry.get("sha256") and size <= HASH_LIMIT_BYTES:
        if sha256_file(path) != entry["sha256"]:
            raise fail(error, path, "content differs from manifest.json (sha256)", fix)
    elif path.suffix == ".safetensors":
        check_safetensors_file(path, fix, error)


# --------------------------------------------------------------------------- fingerprint


def local_source_fingerprint(
    path: str | Path, error: ErrorClass = ModelSourceError
) -> dict[str, Any]:
    """A cheap stat fingerprint of a local model file or directory (no content is read).

    Lists every file (sorted relative path, following symlinks such as the HF cache's) with
    its size and ``mtime_ns``, plus the count and total bytes; an in-place edit changes the
    size or mtime. Hidden entries (``.git``, ``.cache``) are skipped: tool metadata, never
    read as the model. Raises ``error`` (one line) when ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise error(f"{root}: local model path not found; check model.path / asr.path")
    if root.is_file():
        files = [(root.name, root)]
    else:
        files = [
            (p.relative_to(root).as_posix(), p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
    entries = [_stat_entry(name, p) for name, p in sorted(files)]
    return {
        "path": str(root),
        "kind": "file" if root.is_file() else "directory",
        "files": entries,
        "file_count": len(entries),
        "total_bytes": sum(e["size"] for e in entries),
    }


def _stat_entry(name: str, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
