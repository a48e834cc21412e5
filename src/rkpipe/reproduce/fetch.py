"""Bring one model of a run to a path (``rkpipe fetch``), by reference: the run's
``models/references.json`` (DVC path, md5, remote; :func:`rkpipe.reproduce.record.model_references`)
names the bytes, the DVC cache or the DVC remote holds them (content-addressed, so a sweep's
variant is found without checking out its experiment), and their md5 is checked before the
copy is kept. MLflow never holds a second copy of a model.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkpipe.errors import ArtifactError, RemoteError
from rkpipe.reproduce.record import MODELS_ARTIFACT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_model` brought: the reference, where it is now, and from where."""

    reference: dict[str, Any]
    path: Path
    source: str


def run_references(store: Any, run_id: str) -> list[dict[str, Any]]:
    """The models run ``run_id`` recorded by reference; :class:`ArtifactError` without them."""
    text = store.read_artifact(run_id, MODELS_ARTIFACT)
    if text is None:
        raise ArtifactError(
            f"run {run_id} has no {MODELS_ARTIFACT}: its record stage predates models by "
            "reference; rerun the variant, or `dvc get` the model at the run's git.sha"
        )
    return list(json.loads(text))


def pick_reference(references: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """The reference ``model`` names: ``llm`` or ``asr`` (the deployable ``<kind>/quantized``),
    a path under the models directory (``llm/onnx_fp32``) or a full DVC path."""
    for reference in references:
        path = str(reference["path"])
        under = path.split("/", 1)[-1]
        if model in (path, under) or under == f"{model}/quantized":
            return reference
    known = ", ".join(str(r["path"]) for r in references) or "none"
    raise ArtifactError(f"the run references no model {model!r}; it references: {known}")


def fetch_model(repo: Path, reference: dict[str, Any], out: Path) -> Fetched:
    """Copy the model ``reference`` names to ``out`` (atomically), from the DVC cache of
    ``repo`` or, when the cache lacks it, its default remote. Raises :class:`RemoteError`
    when neither holds it, :class:`ArtifactError` when the bytes do not match its md5."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    from rkpipe.io import atomic_path
    from rkpipe.remote import default_remote
    from rkpipe.secrets import redact_uri

    md5, path = str(reference["md5"]), str(reference["path"])
    with Repo(str(repo)) as dvc:
        cache = dvc.cache.local
        source = "the local DVC cache"
        if not _cached(cache, md5):
            remote = default_remote(repo)
            if remote is None:
                raise RemoteError(
                    f"{path} (md5 {md5}) is not in the DVC cache of {repo} and there is no DVC "
                    "remote to pull it from (see the README: a DVC remote over SSH)"
                )
            source = f"DVC remote {remote[0]} ({redact_uri(remote[1])})"
            log.info("pulling %s (md5 %s) from %s", path, md5, source)
            dvc.cloud.pull(_objects(dvc, HashInfo("md5", md5)))
            if not _cached(cache, md5):
                raise RemoteError(
                    f"{source} does not hold {path} (md5 {md5}); on the machine that built "
                    f"it, run `dvc push {path}` (or `dvc exp push` for an experiment)"
                )
        with atomic_path(out) as tmp:
            _checkout(cache, md5, tmp)
            found = dvc_md5(tmp)
            if found != md5:
                raise ArtifactError(f"{path} from {source} has md5 {found}, the run recorded {md5}")
    return Fetched(reference, out, source)


def _objects(dvc: Any, hash_info: Any) -> list[Any]:
    """What to pull for ``hash_info``: a file's object, or a directory's listing and every
    file it lists (DVC transfers only the files named beside their directory)."""
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    if not hash_info.isdir:
        return [hash_info]
    try:
        tree = Tree.load(dvc.cloud.get_remote_odb(None, "pull"), hash_info)
    except (FileNotFoundError, ObjectFormatError):
        return []  # the remote lacks the listing: nothing to pull, the caller says so
    return [hash_info, *(oid for _, _, oid in tree)]


def _cached(cache: Any, md5: str) -> bool:
    """Whether the cache holds the object ``md5`` (for a directory, its listing and files)."""
    if not md5.endswith(".dir"):
        return bool(cache.exists(md5))
    listing = Path(cache.oid_to_path(md5))
    if not listing.is_file():
        return False
    entries = json.loads(listing.read_text(encoding="utf-8"))
    return all(cache.exists(entry["md5"]) for entry in entries)


def _checkout(cache: Any, md5: str, target: Path) -> None:
    if not md5.endswith(".dir"):
        shutil.copyfile(cache.oid_to_path(md5), target)
        return
    listing = json.loads(Path(cache.oid_to_path(md5)).read_text(encoding="utf-8"))
    for entry in listing:
        file = target / entry["relpath"]
        file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache.oid_to_path(entry["md5"]), file)


def dvc_md5(path: Path) -> str:
    """DVC's md5 of a file, or of a directory (``<md5 of its listing>.dir``)."""
    from dvc_data.hashfile.hash import file_md5
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    if path.is_file():
        return str(file_md5(str(path)))
    tree = Tree()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        tree.add(file.relative_to(path).parts, None, HashInfo("md5", file_md5(str(file))))
    tree.digest()
    return str(tree.hash_info.value)
