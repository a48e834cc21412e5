"""One MLflow run per variant, shared by its stages: find or create it, close it with the status
the stage earned (FINISHED, FAILED, KILLED on SIGTERM/Ctrl-C), and close runs a SIGKILL left
RUNNING."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

from rkpipe.config import PipelineConfig, config_dict, flatten, variant_id
from rkpipe.tracking.client import artifact_location, make_client, tracking_uri, with_retry
from rkpipe.tracking.handle import NullRun, VariantRun
from rkpipe.tracking.provenance import reproduction_tags, standard_tags, workspace_root

log = logging.getLogger(__name__)

VARIANT_TAG = "rkpipe.variant"
PID_TAG = "rkpipe.pid"
HOST_TAG = "rkpipe.host"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "rkpipe.sweep"
STORE_DIR = ".mlflow"
PARENT_ENV = "RKPIPE_PARENT_RUN_ID"

# Config sections that say where results go or how they are judged, not what is built.
UNTRACKED_KEYS = ("tracking", "gates")


class Terminated(BaseException):
    """Raised in the main thread when the stage receives SIGTERM (e.g. DVC or a user killed it)."""


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
        yield NullRun(stage)


def _client(cfg: PipelineConfig) -> Any:
    return make_client(tracking_uri(cfg.tracking.uri))


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
