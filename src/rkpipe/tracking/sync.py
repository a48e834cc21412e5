"""Replay the journals (:mod:`rkpipe.tracking.journal`) into the tracking server, in order.

A replay is idempotent: after each entry it sets the run tag ``rkpipe.journal.seq`` to that
entry's sequence number, then removes the entry; entries at or below the tag are skipped, so
an entry replayed before a crash (or a copy of the journal replayed twice) changes nothing.
A stage that journaled and then died (SIGKILL, power loss) left no ``close`` entry: its stage
is recorded KILLED and the run closed, as :func:`rkpipe.tracking.reconcile_killed` does for
a stage that held a live run.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.errors import JournalError
from rkpipe.processes import pid_alive
from rkpipe.tracking.client import ensure_experiment, redact_uri
from rkpipe.tracking.handle import VariantRun
from rkpipe.tracking.journal import Entry, Journal, journals
from rkpipe.tracking.runs import find_or_create_run, link_parent, record_stage_status

log = logging.getLogger(__name__)
SEQ_TAG = "rkpipe.journal.seq"


@dataclass
class Replay:
    """What a replay did: entries applied, skipped as already applied, and runs touched."""

    applied: int = 0
    skipped: int = 0
    runs: int = 0
    unreadable: list[str] = field(default_factory=list)  # one line per entry left unread


def replay_journals(client: Any, root: Path, variant: str | None = None) -> Replay:
    """Replay every journal of ``client``'s store under ``root`` (only ``variant``'s, if
    given). An unreadable entry is skipped and named in :attr:`Replay.unreadable`; the server
    failing again raises :class:`TrackingError`, and what was applied by then is gone from the
    journal, the rest stays."""
    done = Replay()
    store = redact_uri(client.tracking_uri)
    for journal in journals(root):
        if journal.store != store or variant not in (None, journal.variant):
            continue
        entries = journal.entries()
        if entries:
            _replay(client, journal, entries, done)
            done.runs += 1
        done.unreadable += journal.unreadable()
    if done.applied:
        log.info(
            "replayed %d journaled call(s) into %d run(s) on %s", done.applied, done.runs, store
        )
    return done


def _replay(client: Any, journal: Journal, entries: list[Entry], done: Replay) -> None:
    run_id = next((e.run_id for e in entries if e.run_id), None)
    applied_upto = 0
    last: Entry | None = None
    for entry in entries:
        if entry.op == "open":
            run_id = _open(client, journal.variant, entry.args)
            applied_upto = int(client.get_run(run_id).data.tags.get(SEQ_TAG, 0) or 0)
        elif run_id is None:
            raise JournalError(
                f"journal {journal.folder} starts with {entry.path.name} ({entry.op}), "
                "not with the run it belongs to; it was not written by rkpipe"
            )
        elif last is None:
            applied_upto = int(client.get_run(run_id).data.tags.get(SEQ_TAG, 0) or 0)
        if entry.seq > applied_upto and entry.op != "open":
            _apply(client, run_id, entry)
            done.applied += 1
        elif entry.op != "open":
            done.skipped += 1
        client.set_tag(run_id, SEQ_TAG, str(max(entry.seq, applied_upto)))
        journal.forget(entry)
        last = entry
    if run_id and last is not None and last.op != "close" and not _writer_alive(last):
        log.warning(
            "stage %s journaled to %s and died before closing run %s; recording it as KILLED",
            last.stage, journal.folder, run_id,
        )  # fmt: skip
        record_stage_status(client, run_id, last.stage, "KILLED")
        client.set_terminated(run_id, "KILLED")


def _open(client: Any, variant: str, args: dict[str, Any]) -> str:
    experiment_id = ensure_experiment(client, args["experiment"])
    run, _ = find_or_create_run(client, experiment_id, variant, args["run_name"], args["tags"])
    run_id = str(run.info.run_id)
    link_parent(client, run_id, args.get("parent"))
    return run_id


def _apply(client: Any, run_id: str, entry: Entry) -> None:
    run = VariantRun(client, run_id, entry.stage)
    args = entry.args
    if entry.op == "log_params":
        run.log_params(args["params"])
    elif entry.op == "log_metrics":
        run.log_metrics(args["metrics"], args.get("step", 0), args.get("timestamp_ms"))
    elif entry.op == "set_tags":
        run.set_tags(args["tags"])
    elif entry.op == "log_artifact":
        run.log_artifact(entry.files / args["file"], args.get("artifact_path"))
    elif entry.op == "log_dict":
        run.log_dict(args["data"], args["artifact_file"])
    elif entry.op == "log_dataset":
        path = Path(args["path"])
        if path.is_file():  # a dataset input names a file; one that is gone cannot be named
            run.log_dataset(path, args["digest"], args["name"], args["context"])
    elif entry.op == "close":
        record_stage_status(client, run_id, entry.stage, args["status"])
        client.set_terminated(run_id, args["status"])


def _writer_alive(entry: Entry) -> bool:
    """Whether the stage that wrote ``entry`` still runs (another host's counts as alive)."""
    if entry.data.get("host") != socket.gethostname():
        return True
    pid = int(entry.data.get("pid", 0) or 0)
    return pid == os.getpid() or pid_alive(pid)
