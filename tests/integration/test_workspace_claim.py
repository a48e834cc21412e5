"""Two ``dvc exp run`` in one workspace: the second is refused before it rewrites params.yaml,
the first finishes with a consistent dvc.lock, and the claim ends with the first run.

Real DVC: the preflight stage of the first run registers it as a reader of ``"workspace"`` in
DVC's experiment rwlock, which DVC's queue checks before it writes the ``-S`` overrides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from repo_copy import copy_repo, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _wait_for_stage(root: Path, stage: str, timeout: float = 300) -> None:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            if f"stages/{stage}.py" in (proc.info["cmdline"] or []) and proc.info["cwd"] == str(
                root
            ):
                return
        time.sleep(0.1)
    raise AssertionError(f"{stage} never started")


def _workspace_readers(root: Path) -> list:
    path = root / ".dvc" / "tmp" / "exps" / "rwlock"
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("read", {}).get("workspace", [])


def test_second_exp_run_is_refused_before_it_touches_params(tmp_path):
    copy_repo(tmp_path)
    run(["rkpipe", "params"], tmp_path)
    run(["dvc", "repro", "preflight"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock"], tmp_path)

    first = subprocess.Popen(
        ["dvc", "exp", "run", "download_llm", "-S", "model.float_note=first"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for_stage(tmp_path, "download_llm")
    assert "float_note: first" in (tmp_path / "params.yaml").read_text()

    second = run(
        ["dvc", "exp", "run", "download_llm", "-S", "model.float_note=second"],
        tmp_path, check=False, timeout=120,
    )  # fmt: skip
    assert second.returncode != 0
    assert "rkpipe: a pipeline is running in this workspace" in second.stderr + second.stdout
    assert "float_note: first" in (tmp_path / "params.yaml").read_text()

    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output[-3000:]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert lock["stages"]["download_llm"]["params"]["params.yaml"]["model"]["float_note"] == (
        "first"
    )
    deadline = time.monotonic() + 20
    while _workspace_readers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workspace_readers(tmp_path) == []  # the claim ended with the first run

    third = run(["dvc", "exp", "run", "preflight", "-S", "model.float_note=third"], tmp_path)
    assert "had been killed" not in third.stderr + third.stdout
