"""One MLflow run per variant, shared by its stages: find or create it, close it with the status
the stage earned (FINISHED, FAILED, KILLED on SIGTERM/Ctrl-C), and close runs a SIGKILL left
RUNNING.

Each stage's outcome stays visible after later stages succeed: ``rkpipe.stage.<stage>`` holds
its latest status and ``rkpipe.stage.<stage>.history`` every status it ever ended with, in
order (``killed,finished``), appended and never rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rkpipe.config import PipelineConfig, config_dict, flatten, variant_id
from rkpipe.errors import JournalError, TrackerUnreachable, TrackingError
from rkpipe.processes import pid_alive
from rkpipe.tracking.client import (
    ensure_experiment,
    first_line,
    is_server,
    make_client,
    redact_uri,
    tracking_uri,
)
from rkpipe.tracking.handle import NullRun, VariantRun, as_tracking_error, store_failure
from rkpipe.tracking.journal import Journal
from rkpipe.tracking.markers import (
    Marker,
    dead_markers,
    remove_marker,
    update_marker,
    write_marker,
)
from rkpipe.tracking.provenance import reproduction_tags, standard_tags, workspace_root
from rkpipe.tracking.runs import (
    VARIANT_TAG,
    find_or_create_run,
    link_parent,
    record_stage_status,
)
from rkpipe.tracking.sync import replay_journals
from rkpipe.workspace import repo_root

log = logging.getLogger(__name__)

PID_TAG = "rkpipe.pid"
HOST_TAG = "rkpipe.host"
STORE_DIR = ".mlflow"
PARENT_ENV = "RKPIPE_PARENT_RUN_ID"

# Config sections that say where results go or how they are judged, not what is built.
UNTRACKED_KEYS = ("tracking", "gates")


class Terminated(BaseException):
    """Raised in the main thread when the stage receives SIGTERM (e.g. DVC or a user killed it)."""


def run_name(cfg: PipelineConfig) -> str:
    """A run name a person can read, unique per scheme: model, the quant label the report uses
    (``ort int4 MatMulNBits (block 32, acc 4)``, ``w8a8``), platform, the variant hash."""
    from rkpipe.config.labels import config_quant_label

    return f"{cfg.model.name}|{config_quant_label(cfg)}|{cfg.platform.name}|{variant_id(cfg)[:6]}"


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


def _stage_alive(tags: dict[str, str]) -> bool:
    """Whether the stage that last opened the run (tags ``rkpipe.pid``/``rkpipe.host``) still
    runs; a stage on another host cannot be judged from here and counts as alive."""
    pid = int(tags.get(PID_TAG, "0") or 0)
    if not pid:
        return False
    return tags.get(HOST_TAG) != socket.gethostname() or pid_alive(pid)


def _close_if_orphaned(client: Any, run: Any) -> None:
    """Close a run left RUNNING by a SIGKILLed stage (its process is gone) as KILLED.

    The fallback for a kill without a marker (see :func:`reconcile_killed`), e.g. by an older
    rkpipe: same tags, same history entry.
    """
    tags = run.data.tags
    if run.info.status != "RUNNING" or tags.get(HOST_TAG) != socket.gethostname():
        return
    if tags.get(PID_TAG) and not _stage_alive(tags):
        log.warning(
            "run %s was left RUNNING by a killed stage; closing it as KILLED", run.info.run_id
        )
        record_stage_status(client, run.info.run_id, tags.get("rkpipe.stage", "?"), "KILLED", tags)
        client.set_terminated(run.info.run_id, "KILLED")


def reconcile_killed(root: Path | None, cfg: PipelineConfig) -> int:
    """Close the runs of stages that died without closing them; return how many.

    For each marker (``.dvc/tmp/rkpipe/running``) whose process is gone, records the stage as
    KILLED (or the status it failed to close with) in ``rkpipe.stage.<stage>`` and its history,
    and terminates the run with that status if it is still RUNNING and no live stage holds it.
    Cheap when nothing died: it then reads a directory and neither imports mlflow nor
    contacts the tracking server. Raises :class:`TrackingError` if the server is unreachable.
    """
    root = Path(root) if root is not None else repo_root()
    found = dead_markers(root)
    if not found or not cfg.tracking.enabled:
        return 0
    uri = tracking_uri(cfg.tracking.uri, root)
    return reconcile_markers(make_client(uri, cfg.tracking.timeout_s), found)


def reconcile_markers(client: Any, markers: list[Marker]) -> int:
    """:func:`reconcile_killed` with an open client and the dead markers already found."""
    done = 0
    store = redact_uri(client.tracking_uri)
    for marker in markers:
        if marker.data.get("store", store) != store:
            continue  # another store's run: reconciled by a stage that uses that store
        try:
            _reconcile(client, marker)
        except TrackingError:
            raise  # the server is gone: so is every other marker's chance
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc):
                log.warning("cannot reconcile %s: %s", marker.path.name, first_line(exc))
                continue
        remove_marker(marker.path)
        done += 1
    return done


def _reconcile(client: Any, marker: Marker) -> None:
    run = client.get_run(marker.run_id)
    status = marker.outcome
    log.warning(
        "stage %s (pid %d) ended without closing run %s; recording it as %s",
        marker.stage, marker.pid, marker.run_id, status,
    )  # fmt: skip
    if not marker.data.get("recorded"):
        record_stage_status(client, marker.run_id, marker.stage, status, run.data.tags)
    tags = run.data.tags
    mine = tags.get(PID_TAG) in (None, "", str(marker.pid))
    if run.info.status == "RUNNING" and (mine or not _stage_alive(tags)):
        client.set_terminated(marker.run_id, status)


def open_variant_run(client: Any, cfg: PipelineConfig) -> str:
    """Find the variant's run by tag (closing an orphaned one as KILLED) or create it.

    With ``RKPIPE_PARENT_RUN_ID`` set (a sweep), the run becomes that run's child.
    """
    experiment_id = ensure_experiment(client, cfg.tracking.experiment)
    run, found = find_or_create_run(
        client, experiment_id, variant_id(cfg), run_name(cfg), variant_tags(cfg)
    )
    if found:
        _close_if_orphaned(client, run)
    run_id = str(run.info.run_id)
    link_parent(client, run_id, os.environ.get(PARENT_ENV))
    return run_id


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

    First replays the journals a server outage left (:mod:`rkpipe.tracking.sync`) and
    reconciles the runs of killed stages (:func:`reconcile_killed`). Logs the flattened
    config, git state and the resolved config on entry; yields a :class:`VariantRun`.
    Exceptions propagate after the run is marked FAILED (KILLED for SIGTERM or Ctrl-C). A
    tracking server that stays down past ``tracking.timeout_s`` is journaled to with
    ``tracking.journal`` (the stage goes on), else raises :class:`TrackingError` in one line;
    closing the run after another error never hides that error.
    """
    if not cfg.tracking.enabled:
        with untracked_run(stage) as run:
            yield run
        return
    root = repo_root()
    uri = tracking_uri(cfg.tracking.uri, root)
    journal = _journal(cfg, uri, root)
    try:
        client = make_client(uri, cfg.tracking.timeout_s)
        with _as_tracking_error(client, "opening the variant's run"):
            _replay(client, root)
            reconcile_markers(client, dead_markers(root))
            run_id = open_variant_run(client, cfg)
    except TrackerUnreachable as exc:  # a refusal (HTTP 401, a bad request) is not journaled
        if journal is None:
            raise
        down = str(exc)
    else:
        down = ""
    if down:
        with _journaled_stage(cfg, stage, journal, down) as run:  # type: ignore[arg-type]
            yield run
        return
    marker = write_marker(root, run_id, variant_id(cfg), stage, redact_uri(client.tracking_uri))
    run = VariantRun(client, run_id, stage, journal)
    # Any status but FINISHED means an exception is on its way out: it is the one to report.
    with _earned_status(lambda status: _close(run, status, marker, quiet=status != "FINISHED")):
        try:
            with _as_tracking_error(client, "starting the run"):
                client.update_run(run_id, status="RUNNING")
        except TrackerUnreachable as exc:
            run.start_journaling(str(exc))  # raises again without a journal
        _log_start(run, cfg, stage)
        yield run


@contextlib.contextmanager
def _earned_status(close: Callable[[str], None]) -> Iterator[None]:
    """Run the stage's body, then ``close`` with the status it earned: FINISHED, KILLED on
    SIGTERM or Ctrl-C, FAILED on any other exception (which then propagates)."""
    status = "FAILED"
    try:
        with _sigterm_raises():
            yield
            status = "FINISHED"
    except (Terminated, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        close(status)


def _journal(cfg: PipelineConfig, uri: str, root: Path) -> Journal | None:
    """The variant's journal when a server outage should be journaled, else None."""
    if not (cfg.tracking.journal and is_server(uri)):
        return None
    return Journal(root, variant_id(cfg), redact_uri(uri))


def _replay(client: Any, root: Path) -> None:
    """Replay what earlier stages journaled, before this stage logs (so the order holds). An
    unreadable entry is reported and left; the server failing again raises."""
    try:
        done = replay_journals(client, root)
    except JournalError as exc:
        log.error("%s", exc)
        return
    for line in done.unreadable:
        log.error("%s", line)


@contextlib.contextmanager
def _journaled_stage(
    cfg: PipelineConfig, stage: str, journal: Journal, why: str
) -> Iterator[VariantRun]:
    """The stage with the server down from its start: open, log and close go to the journal."""
    run = VariantRun(None, "", stage, journal)
    run.start_journaling(why)
    journal.append(stage, "open", {
        "experiment": cfg.tracking.experiment, "run_name": run_name(cfg),
        "tags": variant_tags(cfg), "parent": os.environ.get(PARENT_ENV),
    })  # fmt: skip
    with _earned_status(lambda status: journal.append(stage, "close", {"status": status})):
        _log_start(run, cfg, stage)
        yield run


def _close(run: VariantRun, status: str, marker: Path, quiet: bool) -> None:
    """Record the stage's status and terminate the run; forget the marker once both are done.

    If the server is down and the run has a journal, the close is journaled. Else, if the
    store fails, the marker keeps the status, so that :func:`reconcile_killed` closes the run
    with it later; the failure is raised unless ``quiet``.
    """
    client, run_id, stage = run.client, run.run_id, run.stage
    recorded = False
    try:
        if run.journaling:
            raise TrackerUnreachable("the tracking server is down")
        with _as_tracking_error(client, "closing the run"):
            record_stage_status(client, run_id, stage, status)
            recorded = True
            client.set_terminated(run_id, status)
    except TrackingError as exc:
        if run.journal is not None and not recorded and isinstance(exc, TrackerUnreachable):
            run.start_journaling(str(exc))
            run.journal.append(stage, "close", {"status": status}, run_id=run_id)
            remove_marker(marker)
            return
        update_marker(marker, outcome=status, recorded=recorded)
        if not quiet:
            raise
        log.debug("run %s not closed: %s", run_id, exc)
        return
    remove_marker(marker)


@contextlib.contextmanager
def _as_tracking_error(client: Any, what: str) -> Iterator[None]:
    """Turn a failure of the store inside the block into one :class:`TrackingError` line."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        if not store_failure(exc):
            raise
        raise as_tracking_error(client.tracking_uri, what, exc) from None


@contextlib.contextmanager
def untracked_run(stage: str) -> Iterator[VariantRun]:
    """A run handle that logs nothing (SIGTERM still raises :class:`Terminated`)."""
    with _sigterm_raises():
        yield NullRun(stage)


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
