"""Local markers of the stages that hold their variant's MLflow run open.

A stage writes ``<root>/.dvc/tmp/rkpipe/running/<variant>.<stage>.<pid>.json`` when it opens the
run and removes it when it has closed it. A marker whose process is gone (SIGKILL, power loss,
OOM killer) names a run that nobody closed: :func:`rkpipe.tracking.reconcile_killed` records
that stage as KILLED and closes the run. ``root`` is the DVC repository root (``DVC_ROOT`` for
queued experiments), the same for every workspace of a project, so the next ``dvc repro`` finds
the marker even when every later stage is restored from DVC's run cache.

Reading markers needs neither mlflow nor the tracking server: the preflight stage that runs on
every ``dvc repro`` stays fast when nothing was killed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkpipe.io import write_json_atomic
from rkpipe.processes import pid_alive, process_start

log = logging.getLogger(__name__)
MARKER_DIR = Path(".dvc") / "tmp" / "rkpipe" / "running"


@dataclass(frozen=True)
class Marker:
    """One stage that opened a run: where its marker is and what it holds."""

    path: Path
    data: dict[str, Any]

    @property
    def run_id(self) -> str:
        """The MLflow run the stage opened."""
        return str(self.data.get("run_id", ""))

    @property
    def stage(self) -> str:
        """The DVC stage."""
        return str(self.data.get("stage", "?"))

    @property
    def pid(self) -> int:
        """The stage's process id."""
        return int(self.data.get("pid", 0) or 0)

    @property
    def outcome(self) -> str:
        """The status the stage meant to close the run with (a failure to close it leaves it
        here), else KILLED: a process that left its marker never got that far."""
        return str(self.data.get("outcome") or "KILLED")


def marker_dir(root: Path) -> Path:
    """Where the markers of the repository at ``root`` live."""
    return Path(root) / MARKER_DIR


def write_marker(root: Path, run_id: str, variant: str, stage: str, store: str) -> Path:
    """Record that this process holds ``run_id`` open for ``stage``; ``store`` is the tracking
    URI with credentials redacted (markers are plain files: they never hold a password)."""
    pid = os.getpid()
    path = marker_dir(root) / f"{variant}.{stage}.{pid}.json"
    data = {
        "run_id": run_id,
        "variant": variant,
        "stage": stage,
        "pid": pid,
        "pid_start": process_start(pid),
        "host": socket.gethostname(),
        "store": store,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, data)
    return path


def update_marker(path: Path, **fields: Any) -> None:
    """Add ``fields`` (e.g. ``outcome``) to a marker; a missing marker stays missing."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        write_json_atomic(path, data | fields)


def remove_marker(path: Path) -> None:
    """Forget a marker (the run it names was closed)."""
    with contextlib.suppress(OSError):
        path.unlink()


def dead_markers(root: Path) -> list[Marker]:
    """Markers of this host whose process is gone, oldest first.

    A marker of a live process (a stage running now, possibly in a parallel queue worker)
    or of another host (a shared file system: its pid means nothing here) is left alone.
    """
    folder = marker_dir(root)
    if not folder.is_dir():
        return []
    found = []
    host = socket.gethostname()
    for path in sorted(folder.glob("*.json"), key=_mtime):
        marker = _read(path)
        if marker is None or marker.data.get("host") != host:
            continue
        if not pid_alive(marker.pid, marker.data.get("pid_start")):
            found.append(marker)
    return found


def _read(path: Path) -> Marker | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # written atomically, so unreadable means removed meanwhile
    return Marker(path, data) if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
