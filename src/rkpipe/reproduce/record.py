"""Record what a variant produced: the sha256 of every declared output, logged to its run.

Run by the ``record`` stage after ``report``: written to ``<reports_dir>/outputs.sha256.json``
and logged to the variant's run as ``outputs/sha256.json`` with the final ``dvc.lock``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.layout import Layout
from rkpipe.reproduce.timings import strip_timings
from rkpipe.workspace import declared_outputs, measurement_outputs

if TYPE_CHECKING:
    from rkpipe.config.schema import PipelineConfig

log = logging.getLogger(__name__)

HASHES_ARTIFACT = "outputs/sha256.json"
RECORD_FILE = "outputs.sha256.json"  # under paths.reports_dir; the record stage's own out


def hash_outputs(root: Path, outputs: Iterable[str]) -> dict[str, str]:
    """``{relative file path: sha256}`` for every file under each output (``missing`` when
    an output does not exist), sorted by path."""
    from rkpipe.io import sha256_file

    hashes: dict[str, str] = {}
    for out in outputs:
        path = root / out
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                hashes[file.relative_to(root).as_posix()] = sha256_file(file)
        elif path.is_file():
            hashes[Path(out).as_posix()] = sha256_file(path)
        else:
            hashes[Path(out).as_posix()] = "missing"
    return dict(sorted(hashes.items()))


def stable_digests(root: Path, files: Iterable[str]) -> dict[str, str]:
    """For each JSON file: sha256 of its canonical form without timing keys, so a rebuild
    can tell "differs only in timings" from a real difference."""
    import hashlib

    digests = {}
    for name in files:
        path = root / name
        if name.endswith(".json") and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            blob = json.dumps(strip_timings(data), sort_keys=True, separators=(",", ":"))
            digests[name] = hashlib.sha256(blob.encode()).hexdigest()
    return digests


def output_record(root: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"files": {path: sha256}, "without_timings": {json path: digest}, "measurements":
    [output]}`` of every output declared in ``root/dvc.yaml`` but the record file itself."""
    reports_dir = params.get("paths", {}).get("reports_dir", "reports")
    own = f"{reports_dir}/{RECORD_FILE}"
    outs = [o for o in declared_outputs(root / "dvc.yaml", params) if o != own]
    files = hash_outputs(root, outs)
    return {
        "files": files,
        "without_timings": stable_digests(root, files),
        "measurements": measurement_outputs(root / "dvc.yaml", params),
    }


def record_outputs(cfg: PipelineConfig, run: Any, root: Path | None = None) -> dict[str, Any]:
    """Hash every declared output, write the record to ``<reports_dir>/outputs.sha256.json``
    and log it (``outputs/sha256.json``) and the final ``dvc.lock`` to the variant's run."""
    from rkpipe.config import config_dict
    from rkpipe.io import write_json_atomic

    root = root or Path.cwd()
    record = output_record(root, config_dict(cfg))
    write_json_atomic(Layout.from_paths(cfg.paths, root).output_record, record)
    run.log_dict(record, HASHES_ARTIFACT)
    if (root / "dvc.lock").is_file():
        run.log_artifact(root / "dvc.lock", "dvc")
    _log_provenance(cfg, run, root, record["files"])
    log.info("recorded sha256 of %d output files", len(record["files"]))
    return record


def _log_provenance(cfg: PipelineConfig, run: Any, root: Path, files: Mapping[str, str]) -> None:
    """Log the manifests (model commit, file hashes, toolkit version) and the calibration
    digest again: stages DVC restored from its run cache logged nothing to this run."""
    for path in (p for p in files if p.endswith("manifest.json")):
        run.log_artifact(root / path, f"manifests/{Path(path).parent.as_posix()}")
    calibration = Layout.from_paths(cfg.paths).calibration.as_posix()
    run.set_tags(
        {"calibration.sha256": files.get(calibration, "missing"), "outputs.files": len(files)}
    )
