"""The acquired checkpoint's ``manifest.json``: provenance, architecture, parameters, files.

Deterministic: no timestamps, no absolute cache paths, never the token, so re-acquiring the
same model gives the same bytes and DVC does not rerun downstream stages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.io import sha256_file
from rkpipe.llm.memory import BYTES_PER_PARAM, estimate_conversion_memory_gb

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def build_manifest(cfg: ModelConfig, model_dir: Path, provenance: dict[str, Any]) -> dict:
    """Describe the checkpoint in ``model_dir``: provenance, architecture, parameters, files."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    param_count, stored = safetensors_stats(model_dir)
    files = [
        _file_entry(model_dir, p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    ]
    return {
        "schema": MANIFEST_SCHEMA,
        "name": cfg.name,
        **provenance,
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "parameter_count": param_count,
        "torch_dtype": stored,
        "load_dtype": cfg.dtype,
        "float_note": cfg.float_note,
        "trust_remote_code": cfg.trust_remote_code,
        "tokenizer_fixes": provenance.get("tokenizer_fixes", []),
        "normalisation": provenance.get("normalisation", []),
        "memory_estimate_gb": _memory_estimates(param_count, cfg.dtype),
        "files": files,
        "size_mb": round(sum(f["size_bytes"] for f in files) / 1e6, 3),
    }


def _memory_estimates(param_count: int, dtype: str) -> dict[str, float]:
    dtype = dtype if dtype in BYTES_PER_PARAM else "float32"
    return {
        backend: estimate_conversion_memory_gb(param_count, dtype, backend)
        for backend in ("onnxruntime", "rkllm")
    }


def _file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {
        "path": path.relative_to(root).as_posix(),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def safetensors_stats(model_dir: Path) -> tuple[int, str]:
    """Count the stored parameters of ``*.safetensors`` in ``model_dir`` from their headers.

    Returns ``(count, dtype)`` where dtype is the torch name of the stored floating dtype
    (``mixed:a,b`` if several). Tied weights stored once are counted once.
    """
    total, dtypes = 0, set()
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
            dtypes.add(_SAFETENSORS_DTYPES.get(info["dtype"], info["dtype"]))
    floats = sorted(d for d in dtypes if d.startswith(("float", "bfloat"))) or sorted(dtypes)
    return total, floats[0] if len(floats) == 1 else "mixed:" + ",".join(floats)
