"""Read and annotate runs outside a stage: sweeps, ``rkpipe compare``, ``rkpipe reproduce``.

Everything here goes through :class:`~rkpipe.tracking.SerialisedClient` (file lock plus
retry on "database is locked"), and hands plain :class:`RunRecord` values to the rest of
the package, so mlflow stays inside :mod:`rkpipe.tracking`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.errors import TrackingError
from rkpipe.tracking import (
    PARENT_TAG,
    VARIANT_TAG,
    ensure_experiment,
    make_client,
    tracking_uri,
)
from rkpipe.workspace import repo_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRecord:
    """What a run holds, as plain values (latest value of each metric)."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time: int = 0

    @property
    def parent_id(self) -> str | None:
        """The ``mlflow.parentRunId`` tag, if any."""
        return self.tags.get(PARENT_TAG)


def _record(run: Any) -> RunRecord:
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
        status=run.info.status,
        experiment_id=str(run.info.experiment_id),
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        start_time=int(run.info.start_time or 0),
    )


class Store:
    """An MLflow tracking store (the project's SQLite one by default)."""

    def __init__(self, uri: str | None = None, root: Path | None = None) -> None:
        self.root = root or repo_root()
        self.uri = tracking_uri(uri, self.root)
        self.client = make_client(self.uri)

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (artifacts under ``.mlflow``) if missing."""
        return ensure_experiment(self.client, name, self.root)

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``; raises :class:`TrackingError` naming the store if it is absent."""
        try:
            return _record(self.client.get_run(run_id))
        except Exception as exc:
            if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc):
                raise TrackingError(f"no run {run_id!r} in the MLflow store {self.uri}") from None
            raise TrackingError(f"cannot read run {run_id!r} from {self.uri}: {exc}") from None

    def search(self, experiment_ids: list[str], query: str, limit: int = 1000) -> list[RunRecord]:
        """Runs of ``experiment_ids`` matching an MLflow filter string, newest first."""
        runs = self.client.search_runs(experiment_ids, filter_string=query, max_results=limit)
        return [_record(r) for r in runs]

    def find_variant(self, experiment: str, variant: str) -> RunRecord | None:
        """The run of the variant hash ``variant`` (tag ``rkpipe.variant``), or None."""
        found = self.search([self.experiment_id(experiment)], f"tags.`{VARIANT_TAG}` = '{variant}'")
        return found[0] if found else None

    def children(self, parent_id: str) -> list[RunRecord]:
        """The child runs of ``parent_id``, oldest first."""
        parent = self.get(parent_id)
        found = self.search([parent.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'")
        return sorted(found, key=lambda r: r.start_time)

    def create_run(self, experiment: str, name: str, tags: Mapping[str, Any]) -> str:
        """Start a run (status RUNNING) and return its id."""
        tags = {k: str(v) for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id(experiment), run_name=name, tags=tags)
        return str(run.info.run_id)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags (values stringified) in one batch."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params not yet logged (values stringified, 100 per batch)."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> None:
        """Log the numeric entries of ``metrics``."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for start in range(0, len(entries), 500):
            self.client.log_batch(run_id, metrics=entries[start : start + 500])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts."""
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file."""
        self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Store ``data`` as a JSON or YAML artifact (by extension)."""
        self.client.log_dict(run_id, data, artifact_file)

    def terminate(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run with ``status`` (FINISHED, FAILED, KILLED)."""
        self.client.set_terminated(run_id, status)

    def read_artifact(self, run_id: str, artifact_file: str) -> str | None:
        """The text of one artifact file, or None when the run has no such artifact."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
        tmp = Path(tempfile.mkdtemp(prefix="rkpipe-artifact-"))
        try:
            local = self.client.download_artifacts(run_id, artifact_file, str(tmp))
            return Path(local).read_text(encoding="utf-8")
        except Exception as exc:  # mlflow raises several types for a missing artifact
            log.debug("no artifact %s in run %s: %s", artifact_file, run_id, exc)
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
