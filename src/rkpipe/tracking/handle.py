"""The logging handle a stage gets for its variant's MLflow run.

Every failure of the tracking store raised while logging (MLflow's exceptions, requests',
SQLAlchemy's, I/O errors) leaves the handle as one :class:`TrackingError` line naming the
store, with credentials redacted: a stage then ends with that line, not a 300-line traceback.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rkpipe.errors import TrackerUnreachable, TrackingError
from rkpipe.tracking.client import first_line, redact_uri, with_retry
from rkpipe.tracking.journal import Journal, journal_call

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
# Exceptions from these packages are the store's failures, not bugs of the caller.
STORE_PACKAGES = ("mlflow", "requests", "urllib3", "sqlalchemy", "alembic")


def store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the tracking store rather than by a bug in our code."""
    package = type(exc).__module__.split(".")[0]
    return package in STORE_PACKAGES or isinstance(exc, OSError)


def as_tracking_error(uri: str, what: str, exc: BaseException) -> TrackingError:
    """One line: which store (credentials redacted), what we tried, and what it said."""
    return TrackingError(f"MLflow {what} failed on {redact_uri(uri)}: {first_line(exc)}")


def _store_errors(func: F) -> F:
    """Turn a store failure inside a :class:`VariantRun` method into :class:`TrackingError`;
    with a journal, a server given up on (the client's bounded wait ran out) journals this call
    and every later one instead (:mod:`rkpipe.tracking.journal`)."""

    @functools.wraps(func)
    def wrapper(self: VariantRun, *args: Any, **kwargs: Any) -> Any:
        if self.journaling:
            return self.journal_call(func.__name__, *args, **kwargs)
        try:
            return func(self, *args, **kwargs)
        except TrackerUnreachable as exc:
            if self.journal is None:
                raise
            self.start_journaling(str(exc))
            return self.journal_call(func.__name__, *args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            if not store_failure(exc):
                raise
            raise as_tracking_error(self.uri, func.__name__, exc) from None

    return wrapper  # type: ignore[return-value]


class VariantRun:
    """Logging handle for the current stage inside the variant's MLflow run."""

    def __init__(
        self, client: Any, run_id: str, stage: str, journal: Journal | None = None
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.stage = stage
        self.journal = journal  # where calls go once the server is down (None: they fail)
        self.journaling = False

    def start_journaling(self, why: str) -> None:
        """Send this call and every later one to the journal (the server is down)."""
        if self.journal is None:
            raise TrackerUnreachable(why)
        if not self.journaling:
            log.warning(
                "%s; journaling the rest of stage %s to %s (replayed by the next stage or "
                "`rkpipe sync`)", why, self.stage, self.journal.folder,
            )  # fmt: skip
        self.journaling = True

    def journal_call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Journal the call ``op(*args, **kwargs)`` of this handle."""
        assert self.journal is not None
        return journal_call(self.journal, self.stage, self.run_id or None, op, *args, **kwargs)

    @property
    def uri(self) -> str:
        """The tracking store's URI (may hold credentials: print it through ``redact_uri``)."""
        return str(getattr(self.client, "tracking_uri", "") or "?")

    @_store_errors
    def tags(self) -> dict[str, str]:
        """The run's tags as the store has them now."""
        return dict(self.client.get_run(self.run_id).data.tags)

    @_store_errors
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values stringified); a key already logged with the same value is fine."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            batch = fresh[start : start + 100]
            with_retry(lambda b=batch: self.client.log_batch(self.run_id, params=b))

    @_store_errors
    def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None
    ) -> None:
        """Log numeric metrics (names carry units, e.g. ``ttft_ms``); non-numbers are skipped.
        ``timestamp_ms`` (default now) is kept by a journal, so a replay logs the same point."""
        from mlflow.entities import Metric

        now = timestamp_ms or int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if entries:
            with_retry(lambda: self.client.log_batch(self.run_id, metrics=entries))

    @_store_errors
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (stringified)."""
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retry(lambda: self.client.log_batch(self.run_id, tags=batch))

    @_store_errors
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

    @_store_errors
    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Store ``data`` as a JSON/YAML artifact (by extension)."""
        self.client.log_dict(self.run_id, data, artifact_file)

    @_store_errors
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


class NullRun(VariantRun):
    """Used when ``tracking.enabled`` is false: every call does nothing."""

    def __init__(self, stage: str) -> None:
        super().__init__(None, "", stage)

    def tags(self) -> dict[str, str]:
        return {}

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("log_") or name == "set_tags":
            return lambda *args, **kwargs: None
        return super().__getattribute__(name)
