"""What a rebuild of a variant needs to know: commit, dirty flag, experiment, runtime versions."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from rkpipe.config import PipelineConfig, config_dict
from rkpipe.workspace import git_state

log = logging.getLogger(__name__)

# Runtime versions recorded as ``version.<package>`` tags on every variant run.
VERSION_PACKAGES = (
    "onnxruntime", "onnx", "torch", "transformers", "optimum-onnx", "numpy", "dvc",
    "mlflow", "hydra-core",
)  # fmt: skip


def workspace_root() -> Path:
    """The workspace the stage runs in (DVC runs stages from the repository root, which
    for a queued experiment is a temporary copy; ``DVC_ROOT`` then names the parent)."""
    return Path.cwd()


def runtime_versions() -> dict[str, str]:
    """``version.<package>`` tags for the runtimes that decide a variant's bytes and speed."""
    import importlib.metadata
    import platform

    versions = {"version.python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version.{package}"] = "not installed"
    return versions


def reproduction_tags(cfg: PipelineConfig, root: Path) -> dict[str, str]:
    """Tags a rebuild needs: commit and dirty flag (against DVC's experiment baseline
    when queued), DVC experiment name, where the rkpipe code came from, runtime versions."""
    import rkpipe
    from rkpipe.errors import RkpipeError
    from rkpipe.workspace import declared_outputs

    try:
        outputs = tuple(declared_outputs(root / "dvc.yaml", config_dict(cfg)))
    except RkpipeError as exc:  # an unresolvable out: count every changed file as dirty
        log.warning("cannot list the pipeline's outputs: %s", exc)
        outputs = ()
    tags = git_state(root, os.environ.get("DVC_EXP_BASELINE_REV"), outputs)
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    tags["rkpipe.package_dir"] = str(Path(rkpipe.__file__).resolve().parent)
    return tags | runtime_versions()


def standard_tags(reproduction: Mapping[str, str]) -> dict[str, str]:
    """MLflow's own tags, which fill the UI's Source, Version and User columns."""
    import getpass

    tags = {"mlflow.source.name": "dvc.yaml", "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        tags["mlflow.user"] = str(os.getuid())
    if reproduction.get("git.sha", "unknown") != "unknown":
        tags["mlflow.source.git.commit"] = reproduction["git.sha"]
    return tags
