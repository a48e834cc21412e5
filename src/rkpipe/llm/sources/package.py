"""``model.source=package``: a GGUF file inside an installed Python package (offline default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.data_wheels import distribution_of, distribution_version, install_command, package_dir
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
    check_gguf_file(gguf_path, f"reinstall the package: {install_command(dist, reinstall=True)}")
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
    directory = package_dir(package) if package else None
    dist = distribution_of(package)
    if directory is None:
        raise ModelSourceError(
            f"model package {package!r} is not installed; install the wheel alone, outside "
            f"site-packages (its declared dependencies build llama-cpp-python from source): "
            f"{install_command(dist)}"
        )
    return directory, dist, distribution_version(dist)
