"""MLflow tracking: one run per variant, shared by every stage of that variant.

This is the only module that imports mlflow. A variant is identified by the hash of
its resolved config (:func:`rkpipe.config.variant_id`); each stage finds the run
tagged with that hash (or creates it), resumes it, logs, and closes it with the
right status: FINISHED, FAILED on an exception, KILLED on SIGTERM/Ctrl-C. A run
left RUNNING by a SIGKILL is closed as KILLED by the next stage that opens it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rkpipe.config import PipelineConfig, config_dict, flatten, variant_id
from rkpipe.errors import TrackingError

log = logging.getLogger(__name__)
T = TypeVar("T")

VARIANT_TAG = "rkpipe.variant"
PID_TAG = "rkpipe.pid"
HOST_TAG = "rkpipe.host"
STORE_DIR = ".mlflow"


class Terminated(BaseException):
    """Raised in the main thread when the stage receives SIGTERM (e.g. DVC or a user killed it)."""


def repo_root() -> Path:
    """The DVC repository root: ``DVC_ROOT`` (set by DVC, the parent repo for queued
    experiments), else the git top level, else the current directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        )
        if top.returncode == 0 and top.stdout.strip():
            return Path(top.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Path.cwd()


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


def git_state(root: Path) -> dict[str, str]:
    """Git sha and dirty flag of ``root`` (``unknown`` outside a git checkout)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        sha = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.TimeoutExpired):
        return {"git.sha": "unknown", "git.dirty": "unknown"}
    return {"git.sha": sha, "git.dirty": str(dirty).lower()}


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
    """Find the variant's run by tag (closing an orphaned one as KILLED) or create it."""
    experiment_id = _experiment_id(client, cfg.tracking.experiment)
    query = f"tags.`{VARIANT_TAG}` = '{variant_id(cfg)}'"
    runs = with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=1)
    )
    if runs:
        _close_if_orphaned(client, runs[0])
        return str(runs[0].info.run_id)
    run = with_retry(
        lambda: client.create_run(experiment_id, run_name=run_name(cfg), tags=variant_tags(cfg))
    )
    return str(run.info.run_id)


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
        with _sigterm_raises():
            yield _NullRun(stage)
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


def _client(cfg: PipelineConfig) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg.tracking.uri)
    mlflow.set_tracking_uri(uri)
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:
        raise TrackingError(f"cannot open MLflow tracking store {uri}: {exc}") from None


def _log_start(run: VariantRun, cfg: PipelineConfig, stage: str) -> None:
    root = repo_root()
    data = config_dict(cfg)
    tracked = {k: v for k, v in data.items() if k != "tracking"}
    run.set_tags(
        {PID_TAG: os.getpid(), HOST_TAG: socket.gethostname(), "rkpipe.stage": stage}
        | git_state(root)
    )
    run.log_params(flatten(tracked))
    run.log_dict(data, "config/resolved.yaml")
    lock = root / "dvc.lock"
    if lock.is_file():
        run.log_artifact(lock, "dvc")
