"""A throw-away copy of this repository for tests that run real DVC in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(argv, cwd, timeout=900, check=True, env=None):
    """Run ``argv`` in ``cwd`` with this venv first on PATH and no inherited tracking URI."""
    extra = env or {}
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(
            f"{argv} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


def copy_repo(dst: Path) -> None:
    """Copy the tracked and untracked-but-not-ignored files (no built outputs) into a new git
    repository at ``dst``."""
    files = run(["git", "ls-files", "-co", "--exclude-standard"], REPO).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file() and not name.startswith(("models/", "metrics/", "reports/")):
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    for name in ("dvc.lock", "data/calib/calibration.json"):
        (dst / name).unlink(missing_ok=True)
    shutil.rmtree(dst / "data" / "asr" / "testset", ignore_errors=True)
    run(["git", "init", "-q"], dst)
    run(
        [
            "git",
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-qam",
            "init",
            "--allow-empty",
        ],
        dst,
        check=False,
    )
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dst)
