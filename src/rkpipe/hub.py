"""Hugging Face hub access: endpoint, token, cache and offline mode, commits pinned to a sha.

Honours ``HF_ENDPOINT`` (e.g. ``https://hf-mirror.com``), ``HF_HUB_CACHE``/``HF_HOME`` and
``HF_HUB_OFFLINE``, all read at call time; the token comes from an environment variable and is
given to huggingface_hub only, never logged nor written. Errors become one-line
:class:`ModelSourceError` messages with the fix.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rkpipe.errors import ModelSourceError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_HINT = "behind the GFW set HF_ENDPOINT=https://hf-mirror.com"


@dataclass(frozen=True)
class HubContext:
    endpoint: str
    token: str | None = None
    cache_dir: str | None = None
    offline: bool = False

    def __repr__(self) -> str:  # never show the token, even in a traceback's locals
        return f"HubContext(endpoint={self.public_endpoint!r}, offline={self.offline})"

    @property
    def public_endpoint(self) -> str:
        return sanitize_endpoint(self.endpoint)


def sanitize_endpoint(url: str) -> str:
    """Return ``url`` without user:password, query or fragment (safe to log and record)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def hub_from_env(token_env: str, cache_dir: Path | str | None) -> HubContext:
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT
    if cache_dir is None:
        cache_dir = os.environ.get("HF_HUB_CACHE") or (
            str(Path(os.environ["HF_HOME"]) / "hub")
            if os.environ.get("HF_HOME")
            else constants.HF_HUB_CACHE
        )
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return HubContext(
        endpoint=endpoint.rstrip("/"),
        token=os.environ.get(token_env) or None,
        cache_dir=str(cache_dir),
        offline=offline_env or bool(constants.HF_HUB_OFFLINE),
    )


def pin_revision(repo_id: str, revision: str, *, token_env: str = "HF_TOKEN") -> str | None:
    """The commit sha ``revision`` of ``repo_id`` points at now, for params.yaml.

    Used as the ``rkpipe_commit`` resolver when conf/ is composed. Offline (or with the hub
    unreachable) it answers from the local cache's refs, else None: the download stage then
    resolves the revision itself and records the sha in the manifest.
    """
    hub = hub_from_env(token_env, None)
    ref = Path(hub.cache_dir or "") / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if not hub.offline:
        try:
            return resolve_revision(repo_id, revision, hub)[0]
        except (HubUnreachable, ModelSourceError) as exc:
            log.warning("cannot pin %s@%s to a commit now (%s)", repo_id, revision, exc)
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip()
    return None


def download_snapshot(
    repo_id: str, revision: str, hub: HubContext, *, allow_patterns: list[str] | None = None
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
    except HubUnreachable as exc:
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


class HubUnreachable(Exception):
    """The endpoint could not be reached (network, DNS, offline mode)."""


def resolve_revision(repo_id: str, revision: str, hub: HubContext) -> tuple[str, list[str]]:
    """Resolve ``revision`` (branch, tag or sha) to a commit sha; return (sha, repo files).

    Raises ModelSourceError for a missing/gated repo or revision, HubUnreachable when the
    endpoint cannot be reached or answers with a server error (a mirror outage).
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    log.info("resolving %s@%s on %s", repo_id, revision, hub.public_endpoint)
    try:
        info = api.model_info(repo_id, revision=revision)
    except Exception as exc:  # classified below; anything unknown propagates unchanged
        if _unreachable(exc):
            raise HubUnreachable(_one_line(exc)) from None
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
    repo_id: str, revision: str, hub: HubContext, allow_patterns: list[str] | None, *, local: bool
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
    repo_id: str, revision: str, hub: HubContext, allow_patterns: list[str] | None, *, reason: str
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
    repo_id: str, sha: str, hub: HubContext, allow_patterns: list[str] | None, wanted: list[str]
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


def _remember_ref(repo_id: str, revision: str, sha: str, hub: HubContext) -> None:
    """Record ``revision -> sha`` in the cache so an offline rerun can resolve ``revision``."""
    from huggingface_hub.file_download import repo_folder_name

    if revision == sha or not hub.cache_dir:
        return
    ref = Path(hub.cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs"
    ref.mkdir(parents=True, exist_ok=True)
    (ref / revision).write_text(sha)


def download_file(repo_id: str, filename: str, revision: str, hub: HubContext) -> tuple[Path, str]:
    """Download one file of ``repo_id`` at ``revision`` (pinned to its sha); return (path, sha)."""
    from huggingface_hub import hf_hub_download

    if hub.offline:
        snapshot, sha = _cached_snapshot(
            repo_id, revision, hub, [filename], reason="HF_HUB_OFFLINE=1"
        )
        path = snapshot / filename
        if not path.is_file():
            raise ModelSourceError(f"{filename} of {repo_id}@{revision} is not in the cache")
        return path, sha
    sha, _ = resolve_revision(repo_id, revision, hub)
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
    _remember_ref(repo_id, revision, sha, hub)
    return path, sha
