"""MLflow tracking: one run per variant, shared by every stage of that variant.

This is the only module that imports mlflow. A variant is identified by the hash of
its resolved config (:func:`rkpipe.config.variant_id`); each stage finds the run
tagged with that hash (or creates it), resumes it, logs, and closes it with the
right status: FINISHED, FAILED on an exception, KILLED on SIGTERM/Ctrl-C. A run
left RUNNING by a SIGKILL is closed as KILLED by the next stage that opens it.

Parallel writers (``dvc queue start -j N``) share one SQLite store: every client call
holds an exclusive file lock next to the database and retries "database is locked"
with backoff (:class:`SerialisedClient`). A sweep passes its MLflow parent run through
``RKPIPE_PARENT_RUN_ID``; the variant's run is then tagged ``mlflow.parentRunId``.
Each stage records what a rebuild needs (:func:`reproduction_tags`): the commit the
variant was built from (DVC's experiment baseline for queued runs), whether the tree
differed from it, the experiment name, and the versions of the runtimes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rkpipe.config import PipelineConfig, config_dict, flatten, variant_id
from rkpipe.errors import TrackingError
from rkpipe.workspace import git_state, repo_root

log = logging.getLogger(__name__)
T = TypeVar("T")

VARIANT_TAG = "rkpipe.variant"
PID_TAG = "rkpipe.pid"
HOST_TAG = "rkpipe.host"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "rkpipe.sweep"
STORE_DIR = ".mlflow"
PARENT_ENV = "RKPIPE_PARENT_RUN_ID"
# Runtime versions recorded as ``version.<package>`` tags on every variant run.
VERSION_PACKAGES = (
    "onnxruntime", "onnx", "torch", "transformers", "optimum-onnx", "numpy", "dvc",
    "mlflow", "hydra-core",
)  # fmt: skip
# Config sections that say where results go or how they are judged, not what is built.
UNTRACKED_KEYS = ("tracking", "gates")


class Terminated(BaseException):
    """Raised in the main thread when the stage receives SIGTERM (e.g. DVC or a user killed it)."""


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


def run_name(cfg: PipelineConfig) -> str:
    """A run name a person can read: model, dtype, platform and the variant hash."""
    dtype = cfg.quant.dtype + ("-pc" if cfg.quant.ort.per_channel else "")
    return f"{cfg.model.name}|{cfg.quant.backend}-{dtype}|{cfg.platform.name}|{variant_id(cfg)[:6]}"


def variant_tags(cfg: PipelineConfig) -> dict[str, str]:
    """Tags to filter on in the MLflow UI."""
    return {
        VARIANT_TAG: variant_id(cfg),
        "model": cfg.model.name,
        "backend": cfg.quant.backend,
        "dtype": cfg.quant.dtype,
        "platform": cfg.platform.name,
        "board": cfg.board.name,
        "asr_model": cfg.asr.name,
        "asr_random_weights": str(cfg.asr.random_weights).lower(),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VariantRun:
    """Logging handle for the current stage inside the variant's MLflow run."""

    def __init__(self, client: Any, run_id: str, stage: str) -> None:
        self.client = client
        self.run_id = run_id
        self.stage = stage

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified); a key already logged with the same value is fine."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            batch = fresh[start : start + 100]
            with_retry(lambda b=batch: self.client.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log numeric metrics (names carry units, e.g. ``ttft_ms``); non-numbers are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if entries:
            with_retry(lambda: self.client.log_batch(self.run_id, metrics=entries))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (stringified)."""
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retry(lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Copy a file or directory into the run's artifacts."""
        path = Path(path)
        if not path.exists():
            log.warning("not logging missing artifact %s", path)
            return
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Store ``data`` as a JSON/YAML artifact (by extension)."""
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_dataset(self, path: Path, digest: str, name: str, context: str) -> None:
        """Record a file (e.g. the calibration JSON) as an MLflow dataset input of the run."""
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # two registered local sources match; either is right
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
        dataset = MetaDataset(source=source, name=name, digest=digest[:36])
        inputs = [
            DatasetInput(
                dataset=dataset._to_mlflow_entity(),
                tags=[InputTag(key=mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT, value=context)],
            )
        ]
        with_retry(lambda: self.client.log_inputs(self.run_id, datasets=inputs))


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class _NullRun(VariantRun):
    """Used when ``tracking.enabled`` is false: every call does nothing."""

    def __init__(self, stage: str) -> None:
        super().__init__(None, "", stage)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("log_") or name == "set_tags":
            return lambda *args, **kwargs: None
        return super().__getattribute__(name)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location()))
    except Exception:  # a parallel worker created it first
        return str(client.get_experiment_by_name(name).experiment_id)


def _close_if_orphaned(client: Any, run: Any) -> None:
    """Close a run left RUNNING by a SIGKILLed stage (its process is gone) as KILLED."""
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get(HOST_TAG) != socket.gethostname():
        return
    pid = int(tags.get(PID_TAG, "0") or 0)
    if pid and not _pid_alive(pid):
        log.warning(
            "run %s was left RUNNING by a killed stage; closing it as KILLED", run.info.run_id
        )
        client.set_tag(run.info.run_id, "rkpipe.killed_stage", tags.get("rkpipe.stage", "?"))
        client.set_terminated(run.info.run_id, "KILLED")


def open_variant_run(client: Any, cfg: PipelineConfig) -> str:
    """Find the variant's run by tag (closing an orphaned one as KILLED) or create it.

    With ``RKPIPE_PARENT_RUN_ID`` set (a sweep), the run becomes that run's child.
    """
    experiment_id = _experiment_id(client, cfg.tracking.experiment)
    query = f"tags.`{VARIANT_TAG}` = '{variant_id(cfg)}'"
    runs = with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=1)
    )
    if runs:
        _close_if_orphaned(client, runs[0])
        run_id = str(runs[0].info.run_id)
    else:
        run = with_retry(
            lambda: client.create_run(experiment_id, run_name=run_name(cfg), tags=variant_tags(cfg))
        )
        run_id = str(run.info.run_id)
    parent = os.environ.get(PARENT_ENV)
    if parent and parent != run_id:
        for key, value in parent_tags(parent).items():
            with_retry(lambda k=key, v=value: client.set_tag(run_id, k, v))
    return run_id


def parent_tags(parent_run_id: str) -> dict[str, str]:
    """The tags that make a run the child of a sweep's parent run in the MLflow UI."""
    return {PARENT_TAG: parent_run_id, SWEEP_TAG: parent_run_id}


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"received signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stage_run(cfg: PipelineConfig, stage: str) -> Iterator[VariantRun]:
    """Open the variant's run for ``stage`` and close it with the status the stage earned.

    Logs the flattened config, git state and the resolved config on entry; yields a
    :class:`VariantRun`. Exceptions propagate after the run is marked FAILED
    (KILLED for SIGTERM or Ctrl-C).
    """
    if not cfg.tracking.enabled:
        with untracked_run(stage) as run:
            yield run
        return
    client = _client(cfg)
    run_id = open_variant_run(client, cfg)
    with_retry(lambda: client.update_run(run_id, status="RUNNING"))
    run = VariantRun(client, run_id, stage)
    status = "FAILED"
    try:
        with _sigterm_raises():
            _log_start(run, cfg, stage)
            yield run
            status = "FINISHED"
    except (Terminated, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        run.set_tags({f"rkpipe.stage.{stage}": status.lower()})
        with_retry(lambda: client.set_terminated(run_id, status))


@contextlib.contextmanager
def untracked_run(stage: str) -> Iterator[VariantRun]:
    """A run handle that logs nothing (SIGTERM still raises :class:`Terminated`)."""
    with _sigterm_raises():
        yield _NullRun(stage)


def _client(cfg: PipelineConfig) -> Any:
    return make_client(tracking_uri(cfg.tracking.uri))


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


def _log_start(run: VariantRun, cfg: PipelineConfig, stage: str) -> None:
    root = workspace_root()
    data = config_dict(cfg)
    tracked = {k: v for k, v in data.items() if k not in UNTRACKED_KEYS}
    reproduction = reproduction_tags(cfg, root)
    run.set_tags(
        {PID_TAG: os.getpid(), HOST_TAG: socket.gethostname(), "rkpipe.stage": stage}
        | reproduction
        | standard_tags(reproduction)
    )
    run.log_params(flatten(tracked))
    run.log_dict(data, "config/resolved.yaml")
    for name in ("params.yaml", "dvc.lock"):
        if (root / name).is_file():
            run.log_artifact(root / name, "dvc")
