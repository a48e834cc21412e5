"""The MLflow client: which store, and safe access to a SQLite store shared by parallel writers.

Parallel writers (``dvc queue start -j N``) share one SQLite store: every client call holds an
exclusive file lock next to the database and retries "database is locked" with backoff
(:class:`SerialisedClient`).

A tracking *server* (``http(s)://``) is waited for at most ``tracking.timeout_s``: MLflow's own
retries (7, exponential backoff, 120 s per request) take about 250 s on an unreachable server,
so the client turns them off and retries itself until that deadline, then fails with one
:class:`TrackingError` line naming the URI (credentials redacted, :func:`redact_uri`); every
later call of that client fails at once, so closing the run cannot hang the exit either.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rkpipe.errors import TrackerUnreachable, TrackingError
from rkpipe.secrets import redact_uri
from rkpipe.workspace import repo_root

log = logging.getLogger(__name__)
T = TypeVar("T")

STORE_DIR = ".mlflow"
DEFAULT_TIMEOUT_S = 10.0
# What to tell the user when the tracking server is unusable.
FALLBACK_HINT = "set tracking.uri=null for the project's embedded store, or tracking.enabled=false"


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (HTTP), not an embedded store."""
    return uri.lower().startswith(("http://", "https://"))


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


# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, judges); rkpipe's
# experiments hold model variants, so they say so.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3's runs list shows no metric column until a user picks some, and the order metrics
# were logged in does not change that. A shared view (the UI's "Views" menu, stored as this
# experiment tag) opens it with the headline figures as columns:
# <ui>/#/experiments/<id>/runs?viewStateShareKey=rkpipe
VIEW_KEY = "rkpipe"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def headline_view() -> str:
    """The shared view's state: run name, date, the compared figures and the gate verdict."""
    from rkpipe.measure.figures import COMPARED

    columns = [
        "tags.`mlflow.runName`", "attributes.start_time",
        *(f"metrics.`{name}`" for name in COMPARED), "tags.`gate`",
    ]  # fmt: skip
    return json.dumps({"selectedColumns": columns})


def ensure_experiment(client: Any, name: str, root: Path | None = None) -> str:
    """The id of experiment ``name``, created if missing (artifacts under ``<root>/.mlflow``, or
    where a tracking server keeps them), tagged as a model-development experiment so the
    MLflow UI opens on its runs, with the shared view :data:`VIEW_KEY` of the headline figures."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # A server keeps artifacts where it was told (--serve-artifacts: clients upload through
        # it); a local path here would leave them on whichever machine created the experiment.
        server = is_server(str(getattr(client, "tracking_uri", "") or ""))
        try:
            created = client.create_experiment(
                name, artifact_location=None if server else artifact_location(root),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: headline_view()},
            )  # fmt: skip
            return str(created)
        except Exception:  # a parallel worker created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: headline_view()}
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            _set_experiment_tag(client, experiment.experiment_id, key, value)
    return str(experiment.experiment_id)


def _set_experiment_tag(client: Any, experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag that a parallel worker may be setting at the same moment.

    MLflow's SQL store inserts a missing tag after a select, so two workers racing on a
    server answer one of them with a unique-key violation (``experiment_tag_pk``); the
    loser re-reads and accepts the tag when the winner wrote the same value.
    """
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except Exception:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            client.set_experiment_tag(experiment_id, key, value)


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


@functools.cache
def _file_lock(path: str) -> Any:
    """One re-entrant lock object per lock file in a process (filelock counts nested holds)."""
    from filelock import FileLock

    return FileLock(path)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` while talking to a SQLite store.

    Serialises the writers of parallel DVC queue workers on one host; re-entrant in
    a process; a no-op for server URIs.
    """
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(f"{db}.lock"):
        yield


class SerialisedClient:
    """An ``MlflowClient`` whose every call holds :func:`store_lock` and is retried
    with :func:`with_retry` (SQLite "database is locked", MLflow #6490, #20014); for a
    tracking server, retried within ``timeout_s`` instead (:func:`make_client`)."""

    def __init__(self, client: Any, uri: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = client
        self._uri = uri
        self._timeout_s = timeout_s
        self._down: str | None = None  # why the server was given up on, once it was

    @property
    def tracking_uri(self) -> str:
        """The store this client writes to."""
        return self._uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if is_server(self._uri):
                return self._bounded(name, lambda: attr(*args, **kwargs))

            def locked() -> Any:
                with store_lock(self._uri):
                    return attr(*args, **kwargs)

            return with_retry(locked)

        return call

    def _bounded(self, name: str, call: Callable[[], T]) -> T:
        """``call`` retried on transport failures until ``timeout_s`` has passed; then
        :class:`TrackingError`, and every later call fails at once with it."""
        if self._down:
            raise TrackerUnreachable(self._down)
        deadline = time.monotonic() + self._timeout_s
        delay = 0.25
        while True:
            _set_request_timeout(deadline - time.monotonic())
            try:
                return call()
            except Exception as exc:
                if not transport_failure(exc):
                    raise
                reason = failure_reason(exc, self._timeout_s)
            # MLflow reads its request timeout as whole seconds: no attempt under 1 s is left.
            if deadline - time.monotonic() < delay + 1.0:
                self._down = unreachable_message(self._uri, f"{name}: {reason}", self._timeout_s)
                raise TrackerUnreachable(self._down) from None
            log.debug("tracking server %s: %s; retrying", redact_uri(self._uri), reason)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def unreachable_message(uri: str, what: str, timeout_s: float) -> str:
    """The one line that says a tracking server cannot be used, and what to do instead."""
    source = " (from MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") else ""
    hint = f"unset MLFLOW_TRACKING_URI, or {FALLBACK_HINT}" if source else FALLBACK_HINT
    return (
        f"MLflow tracking server {redact_uri(uri)}{source} failed within {timeout_s:g} s "
        f"({redact_uri(what)}); {hint}"
    )


def transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the server could not be reached or answered 5xx/429 (worth a
    retry), as opposed to an answer such as "run not found"."""
    text = str(exc)
    if text.startswith("API request to") and "failed with" in text:
        return True  # mlflow.utils.rest_utils wraps every requests/urllib3 failure so
    chain: BaseException | None = exc
    while chain is not None:
        if type(chain).__module__.split(".")[0] in ("requests", "urllib3"):
            return True
        if isinstance(chain, (ConnectionError, TimeoutError)):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def failure_reason(exc: BaseException, timeout_s: float) -> str:
    """A few words for why a request failed: refused, timed out, unknown host, HTTP code."""
    text = str(exc)
    for needle, reason in (
        ("refused", "connection refused"),
        ("timed out", f"no answer within {timeout_s:g} s"),
        ("Timeout", f"no answer within {timeout_s:g} s"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("RemoteDisconnected", "connection closed without an answer"),
        ("Connection reset", "connection reset"),
    ):
        if needle in text:
            return reason
    code = re.search(r"(?:too many |error code |HTTP |status code[: ]+)(\d{3})", text)
    if code:
        return f"HTTP {code.group(1)}"
    return redact_uri(text.splitlines()[0] if text else type(exc).__name__)[:200]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, credentials redacted, at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return redact_uri(line)[:limit]


def _set_request_timeout(remaining_s: float) -> None:
    # MLflow reads MLFLOW_HTTP_REQUEST_TIMEOUT (an int) at every request, so each attempt
    # waits at most what is left of the deadline (at least 1 s: MLflow rejects fractions).
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.floor(remaining_s)))


def bound_http_requests(timeout_s: float) -> None:
    """Make MLflow's HTTP calls fail fast: no retries or backoff of its own (urllib3's would
    add up to minutes), each request waits at most ``timeout_s``; :class:`SerialisedClient`
    retries within ``timeout_s`` instead. Set in the environment, so child processes that
    talk to the same server inherit the bound."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    _set_request_timeout(timeout_s)


def make_client(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> SerialisedClient:
    """A :class:`SerialisedClient` for ``uri``; creates the store's tables under the lock.

    A tracking server that does not answer within ``timeout_s`` (see
    :func:`bound_http_requests`), or a store that cannot be opened, raises
    :class:`TrackingError` naming the URI with its credentials redacted.
    """
    from mlflow.tracking import MlflowClient

    if is_server(uri):
        bound_http_requests(timeout_s)

    # No mlflow.set_tracking_uri: it also exports MLFLOW_TRACKING_URI, which would
    # redirect every later store in this process (and its children) to this one.
    def connect() -> SerialisedClient:
        with store_lock(uri):  # creating or migrating the schema must not run twice at once
            client = SerialisedClient(MlflowClient(tracking_uri=uri), uri, timeout_s)
            client.search_experiments(max_results=1)
        return client

    try:
        return with_retry(connect)
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"cannot open MLflow tracking store {redact_uri(uri)}: {first_line(exc)}"
        ) from None


def check_tracker(uri: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Probe the tracking server the stages will use, in at most about ``timeout_s``.

    ``MLFLOW_TRACKING_URI`` wins over ``uri``, as in :func:`tracking_uri`. An embedded store
    (``null``, ``sqlite:``, ``file:``) returns at once; a server must answer MLflow's
    experiments search with HTTP 200, else :class:`TrackingError` in one line naming the URI
    (credentials redacted), what failed and what to do. Neither mlflow nor requests is imported.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri
    if not uri or not is_server(uri):
        return
    import urllib.error
    import urllib.request

    request = _probe_request(uri)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_tls_context()) as reply:
            reply.read(1)
    except urllib.error.HTTPError as exc:
        what = "rejected the credentials" if exc.code in (401, 403) else "is it an MLflow server?"
        error = TrackerUnreachable if exc.code >= 500 else TrackingError  # 5xx: down for now
        raise error(unreachable_message(uri, f"HTTP {exc.code}: {what}", timeout_s)) from None
    except (OSError, ValueError) as exc:  # URLError, socket.timeout, ssl errors; a bad URL
        reason = failure_reason(getattr(exc, "reason", exc), timeout_s)
        raise TrackerUnreachable(unreachable_message(uri, reason, timeout_s)) from None


def _probe_request(uri: str) -> Any:
    """GET of the experiments search API, with the credentials MLflow would send."""
    import base64
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    user, password = parts.username, parts.password
    if user is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user = os.environ["MLFLOW_TRACKING_USERNAME"]
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    url = urllib.parse.urlunsplit((parts.scheme, netloc, path, "max_results=1", ""))
    headers = {"Accept": "application/json"}
    if user is not None:
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    return urllib.request.Request(url, headers=headers)


def _tls_context() -> Any:
    """An unverified TLS context when ``MLFLOW_TRACKING_INSECURE_TLS`` is true, as MLflow does."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1"):
        return None
    import ssl

    return ssl._create_unverified_context()
