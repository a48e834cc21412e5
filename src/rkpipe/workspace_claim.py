"""One pipeline run per workspace: a second ``dvc exp run`` is refused before it rewrites
``params.yaml``.

``dvc exp run`` holds DVC's repository lock while it writes the ``-S`` overrides into
``params.yaml``, then releases it while the stages run (``Experiments._reproduce_queue`` is
``@unlocked_repo`` in DVC 3.x). A second ``dvc exp run`` in that window rewrote
``params.yaml`` under the first, which then failed half way with a mixed ``dvc.lock``.

DVC's experiment queue takes a write lock on ``"workspace"`` in its rwlock file
(``.dvc/tmp/exps/rwlock``) before it writes ``params.yaml``. The preflight stage adds the
running ``dvc exp run`` process as a reader of ``"workspace"`` there, under DVC's own lock, so
the second one fails at that lock with a message naming the first. The entry names the
``dvc`` process, so it ends with it: a detached watcher removes it when that process exits,
and DVC itself drops entries of dead processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKSPACE = "workspace"  # the rwlock path DVC's workspace and celery queues write
CLAIM_NOTE = "rkpipe: a pipeline is running in this workspace, started by"


def running_exp_run() -> tuple[int, str] | None:
    """The ``dvc exp run`` process this stage runs under (pid, command), if any."""
    import psutil

    for parent in psutil.Process().parents():
        try:
            argv = parent.cmdline()
        except psutil.Error:
            continue
        # argv[0] is the dvc script, or the Python interpreter running it (argv[1])
        is_dvc = any(os.path.basename(arg) == "dvc" for arg in argv[:2])
        if is_dvc and "exp" in argv and "run" in argv:
            return parent.pid, " ".join(argv)
    return None


def claim_workspace(repo: Path) -> int | None:
    """Register the running ``dvc exp run`` as a reader of the workspace; returns its pid."""
    found = running_exp_run()
    if found is None:
        return None
    pid, command = found
    info = {"pid": pid, "cmd": f"{CLAIM_NOTE} `{command}`; wait for it to finish"}
    lock_dir = repo / ".dvc" / "tmp" / "exps"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with _edited_rwlock(lock_dir) as lock:
        readers = lock["read"].setdefault(WORKSPACE, [])
        if info not in readers:
            readers.append(info)
    _watch_until_exit(lock_dir, info)
    return pid


def release_claim(lock_dir: Path, info: dict) -> None:
    """Remove ``info`` from the workspace readers (the watcher calls it)."""
    with _edited_rwlock(lock_dir) as lock:
        readers = lock["read"].get(WORKSPACE, [])
        if info in readers:
            readers.remove(info)
        if not readers:
            lock["read"].pop(WORKSPACE, None)


def _edited_rwlock(lock_dir: Path):
    # DVC's own editor of its rwlock file, under its own lock: the same code DVC uses to check
    # it, so the entry has exactly the format DVC reads (an integration test pins this).
    from dvc.fs import localfs
    from dvc.rwlock import _edit_rwlock

    return _edit_rwlock(os.fspath(lock_dir), localfs, False)


def _watch_until_exit(lock_dir: Path, info: dict) -> None:
    """Start a detached process that releases the claim when the ``dvc`` process exits."""
    code = (
        "import json,sys,psutil\n"
        "from pathlib import Path\n"
        "from rkpipe.workspace_claim import release_claim\n"
        "info=json.loads(sys.argv[2])\n"
        "try:\n psutil.Process(info['pid']).wait()\n"
        "except psutil.Error:\n pass\n"
        "release_claim(Path(sys.argv[1]), info)\n"
    )
    subprocess.Popen(
        [sys.executable, "-c", code, os.fspath(lock_dir), json.dumps(info)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
