"""The MLflow client: which store, and safe access to a SQLite store shared by parallel writers.

Parallel writers (``dvc queue start -j N``) share one SQLite store: every client call holds an
exclusive file lock next to the database and retries "database is locked" with backoff
(:class:`SerialisedClient`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rkpipe.errors import TrackingError
from rkpipe.workspace import repo_root

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_DIR = ".mlflow"


def tracking_uri(uri: str | None, root: Path | None = None) -> str:
    """The MLflow tracking URI: ``MLFLOW_TRACKING_URI``, else ``uri``, else the project's
    SQLite store ``<root>/.mlflow/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if uri:
        return uri
    store = (root or repo_root()) / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_location(root: Path | None = None) -> str:
    """Where new experiments keep artifacts (explicit, so they never land in ./mlruns)."""
    return ((root or repo_root()) / STORE_DIR / "artifacts").as_uri()


def with_retry(call: Callable[[], T], attempts: int = 8, first_delay: float = 0.2) -> T:
    """Run ``call`` retrying SQLite "database is locked" errors with exponential backoff.

    Parallel DVC queue workers write to the same SQLite store (MLflow #6490, #20014).
    """
    delay = first_delay
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in several types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            log.debug("tracking store busy, retrying in %.1fs", delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


_LOCK_DEPTH: dict[str, int] = {}


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<db>.lock`` while talking to a SQLite store.

    Serialises the writers of parallel DVC queue workers on one host; re-entrant in
    a process; a no-op for server URIs.
    """
    db = _sqlite_file(uri)
    if db is None or _LOCK_DEPTH.get(str(db)):
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _LOCK_DEPTH[str(db)] = 1
        try:
            yield
        finally:
            _LOCK_DEPTH[str(db)] = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


class SerialisedClient:
    """An ``MlflowClient`` whose every call holds :func:`store_lock` and is retried
    with :func:`with_retry` (SQLite "database is locked", MLflow #6490, #20014)."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client = client
        self._uri = uri

    @property
    def tracking_uri(self) -> str:
        """The store this client writes to."""
        return self._uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            def locked() -> Any:
                with store_lock(self._uri):
                    return attr(*args, **kwargs)

            return with_retry(locked)

        return call


def make_client(uri: str) -> SerialisedClient:
    """A :class:`SerialisedClient` for ``uri``; creates the store's tables under the lock.

    Raises :class:`TrackingError` when the store cannot be opened.
    """
    from mlflow.tracking import MlflowClient

    # No mlflow.set_tracking_uri: it also exports MLFLOW_TRACKING_URI, which would
    # redirect every later store in this process (and its children) to this one.
    def connect() -> SerialisedClient:
        with store_lock(uri):  # creating or migrating the schema must not run twice at once
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        return SerialisedClient(client, uri)

    try:
        return with_retry(connect)
    except Exception as exc:
        raise TrackingError(f"cannot open MLflow tracking store {uri}: {exc}") from None
