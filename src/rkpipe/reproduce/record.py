"""Record what a variant produced: the digest of every file of every declared output, logged
to its run.

Run by the ``record`` stage after ``report``: written to ``<reports_dir>/outputs.sha256.json``
and logged to the variant's run as ``outputs/sha256.json`` with the final ``dvc.lock``.

The digests are DVC's own md5s, read from ``dvc.lock`` and, for a directory, from its ``.dir``
listing in the DVC cache: DVC hashed every output when it committed it, and hashing the 1.5 GB
of a variant's outputs again cost 13 s per variant. Only a file DVC has no digest for is hashed
here (md5, as DVC does). Records made before this (``hash`` absent) hold sha256s; a rebuild
compared with one of them is hashed the old way (:func:`output_record`'s ``algorithm``).
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
MODELS_ARTIFACT = "models/references.json"  # models by reference: DVC path, md5, remote
RECORD_FILE = "outputs.sha256.json"  # under paths.reports_dir; the record stage's own out


HASH = "md5"  # DVC's; records without a "hash" key hold sha256s (LEGACY_HASH)
LEGACY_HASH = "sha256"


def _file_digest(path: Path, algorithm: str) -> str:
    import hashlib

    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_outputs(
    root: Path,
    outputs: Iterable[str],
    algorithm: str = HASH,
    known: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``{relative file path: digest}`` for every file under each output (``missing`` when
    an output does not exist), sorted by path. ``known`` digests (DVC's) are not recomputed."""
    hashes: dict[str, str] = {}
    known = known or {}
    for out in outputs:
        path = root / out
        if not path.exists():
            hashes[Path(out).as_posix()] = "missing"
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            name = file.relative_to(root).as_posix()
            hashes[name] = known.get(name) or _file_digest(file, algorithm)
    return dict(sorted(hashes.items()))


def lock_outs(root: Path) -> list[dict[str, Any]]:
    """Every stage output entry of ``root/dvc.lock`` (path, hash, md5, size, nfiles)."""
    import yaml

    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return []
    lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
    return [o for s in (lock.get("stages") or {}).values() for o in s.get("outs") or []]


def model_references(root: Path, models_dir: str) -> list[dict[str, Any]]:
    """The variant's models by reference, not by copy: each output under ``models_dir`` with
    its md5 and size from ``dvc.lock`` and the DVC remote that holds it (``dvc get``/``dvc
    pull`` of that path at the run's commit brings exactly these bytes back)."""
    from rkpipe.remote import default_remote
    from rkpipe.secrets import redact_uri

    remote = (default_remote(root) or (None, None))[1]
    return [
        {
            "path": str(out["path"]),
            "md5": str(out["md5"]),
            "size": out.get("size"),
            "nfiles": out.get("nfiles"),
            "remote": redact_uri(remote) if remote else None,
        }  # fmt: skip
        for out in lock_outs(root)
        if str(out.get("path", "")).startswith(models_dir.rstrip("/") + "/") and out.get("md5")
    ]


def lock_digests(root: Path) -> dict[str, str]:
    """``{file path: md5}`` of every stage output DVC recorded in ``root/dvc.lock``: a file's
    md5 from the lock, a directory's files' from its ``.dir`` listing in the DVC cache (a
    listing missing from the cache contributes nothing, so those files are hashed here)."""
    outs = lock_outs(root)
    digests: dict[str, str] = {}
    cache = None
    for out in (o for o in outs if o.get("hash") == HASH and o.get("md5")):
        path, md5 = str(out["path"]), str(out["md5"])
        if not md5.endswith(".dir"):
            digests[path] = md5
            continue
        cache = cache or _cache_dir(root)
        listing = cache / md5[:2] / md5[2:] if cache else None
        if listing and listing.is_file():
            for entry in json.loads(listing.read_text(encoding="utf-8")):
                digests[f"{path}/{entry['relpath']}"] = entry["md5"]
    return digests


def _cache_dir(root: Path) -> Path | None:
    """Where DVC keeps md5-addressed objects for the repository at ``root``."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return Path(repo.cache.local.path)
    except Exception:  # noqa: BLE001 - no usable DVC repo: every file is hashed here
        log.debug("no DVC cache for %s", root, exc_info=True)
        return None


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


def output_record(root: Path, params: Mapping[str, Any], algorithm: str = HASH) -> dict[str, Any]:
    """``{"hash": algorithm, "files": {path: digest}, "without_timings": {json path: digest},
    "measurements": [output]}`` of every output declared in ``root/dvc.yaml`` but the record
    file itself. With ``md5`` the digests are DVC's (``dvc.lock``); ``sha256`` hashes every file
    again, to compare with a record made before records used DVC's digests."""
    reports_dir = params.get("paths", {}).get("reports_dir", "reports")
    own = f"{reports_dir}/{RECORD_FILE}"
    outs = [o for o in declared_outputs(root / "dvc.yaml", params) if o != own]
    known = lock_digests(root) if algorithm == HASH else {}
    files = hash_outputs(root, outs, algorithm, known)
    return {
        **({"hash": algorithm} if algorithm == HASH else {}),
        "files": files,
        "without_timings": stable_digests(root, files),
        "measurements": measurement_outputs(root / "dvc.yaml", params),
    }


def record_outputs(cfg: PipelineConfig, run: Any, root: Path | None = None) -> dict[str, Any]:
    """Digest every declared output, write the record to ``<reports_dir>/outputs.sha256.json``
    and log it (``outputs/sha256.json``) and the final ``dvc.lock`` to the variant's run."""
    from rkpipe.config import config_dict
    from rkpipe.io import write_json_atomic

    root = root or Path.cwd()
    record = output_record(root, config_dict(cfg))
    write_json_atomic(Layout.from_paths(cfg.paths, root).output_record, record)
    run.log_dict(record, HASHES_ARTIFACT)
    models = model_references(root, cfg.paths.models_dir)
    run.log_dict(models, MODELS_ARTIFACT)
    run.set_tags({f"model.{m['path']}.md5": m["md5"] for m in models})
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
