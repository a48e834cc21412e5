"""Which processes run on this host: liveness that survives pid reuse, boot time, host token.

Used to tell a killed writer's leftovers (:mod:`rkpipe.io`) and a killed stage's MLflow run
(:mod:`rkpipe.tracking.markers`) from those of a writer that still runs.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path


def host_token() -> str:
    """This host's name as it appears in temporaries' names (no dots; at most 32 characters)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:32] or "host"


def boot_time() -> float | None:
    """When this machine booted (epoch seconds), from ``/proc/stat``; None off Linux."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc``), None if unknown.

    With the pid it identifies a process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[19]) if len(fields) > 19 else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as dead); with ``started``
    (see :func:`process_start`), also that it is the same process and not a reused pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError:  # it exited between kill(0) and the read
        return False
    except OSError:
        return True  # no /proc: trust kill(0)
    if stat[stat.rfind(")") + 2 :].startswith("Z"):
        return False
    return started is None or process_start(pid) in (None, started)
