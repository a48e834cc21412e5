"""kill -9 at a spread of points in five stages, then ``dvc repro``: the pipeline recovers.

One copy of the repository is built once (experiment=smoke). For each point, a forced
``dvc repro -f -s <stage>`` is started, the stage's own Python process is SIGKILLed after a
delay (the way an OOM killer or a lost session ends it), and ``dvc repro`` is run again.
After each kill:

- the re-run finishes and ``dvc status`` is clean;
- every output loads (metrics JSON parse, ONNX models load, the report is there);
- DVC's locks do not block (the re-run itself proves it) and no leftover temporaries remain;
- no MLflow run is left RUNNING, and when the stage had opened the variant's run, the run
  records the kill in the stage's history (``rkpipe.stage.<stage>.history`` holds ``killed``);
- the board lock of deploy_bench can be taken again.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from repo_copy import copy_repo, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# (stage, seconds after the stage's process appears): early, mid-work and late points.
KILL_POINTS = [
    ("export_llm", 3.0),
    ("export_llm", 15.0),
    ("quantize_llm", 2.0),
    ("quantize_llm", 10.0),
    ("evaluate", 4.0),
    ("evaluate", 15.0),
    ("deploy_bench", 3.0),
    ("deploy_bench", 12.0),
    ("record", 0.5),
    ("record", 3.0),
]


def _stage_pid(root: Path, stage: str, timeout: float = 120.0) -> int | None:
    """The pid of ``python stages/<stage>.py`` running in ``root``, once it has started."""
    import psutil

    script = f"stages/{stage}.py"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
            cmd = proc.info.get("cmdline") or []
            if script in cmd and proc.info.get("cwd") == str(root):
                return proc.info["pid"]
        time.sleep(0.1)
    return None


def _kill_stage_during(root: Path, stage: str, delay: float) -> tuple[bool, bool]:
    """Run the stage alone, forced, and SIGKILL its process ``delay`` s after it starts.
    Returns whether the kill landed (the stage was still running) and whether the stage had
    opened its MLflow run by then (its marker under .dvc/tmp/rkpipe/running was there)."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    repro = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", stage], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pid = _stage_pid(root, stage)
    assert pid is not None, f"stage {stage} never started"
    time.sleep(delay)
    markers = root / ".dvc" / "tmp" / "rkpipe" / "running"
    opened = any(markers.glob(f"*.{stage}.{pid}.json"))
    try:
        os.kill(pid, signal.SIGKILL)
        landed = True
    except ProcessLookupError:
        landed = False
    output, _ = repro.communicate(timeout=600)
    if landed:
        assert repro.returncode != 0, output[-2000:]
    return landed, opened


def _runs(root: Path) -> list:
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{root}/.mlflow/mlflow.db")
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], max_results=500)


def _assert_outputs_load(root: Path) -> None:
    import onnx

    for metrics in (root / "metrics").glob("*.json"):
        json.loads(metrics.read_text())
    for model in (root / "models" / "llm" / "quantized").rglob("*.onnx"):
        onnx.load(str(model), load_external_data=False)
    assert (root / "reports" / "report.md").stat().st_size > 0
    json.loads((root / "reports" / "outputs.sha256.json").read_text())
    leftovers = [p for p in root.rglob(".*.tmp") if ".dvc" not in p.parts]
    assert leftovers == []


def _board_lock_free() -> None:
    for lock in Path(tempfile.gettempdir()).glob("rkpipe-board-*.lock"):
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    copy_repo(root)
    run(["rkpipe", "params", "experiment=smoke"], root)
    run(["dvc", "repro"], root, timeout=1800)
    return root


def test_kill_minus_nine_at_every_point_is_survived(built):
    survived, landed_points, opened_points = [], [], []
    for stage, delay in KILL_POINTS:
        landed, opened = _kill_stage_during(built, stage, delay)
        if not landed:
            continue  # the stage finished first: not a kill point on this machine
        landed_points.append((stage, delay))
        if opened:
            opened_points.append((stage, delay))
        run(["dvc", "repro"], built, timeout=1800)
        status = run(["dvc", "status", "--json"], built).stdout
        changed = {k: v for k, v in json.loads(status).items() if k != "preflight"}
        changed.pop("host_fingerprint", None)  # always_changed stages are always listed
        assert changed == {}, status
        _assert_outputs_load(built)
        runs = _runs(built)
        assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
        if opened:  # a stage killed before it opened its run has nothing to record there
            history = [r.data.tags.get(f"rkpipe.stage.{stage}.history", "") for r in runs]
            assert any("killed" in h for h in history), (stage, history)
        _board_lock_free()
        survived.append((stage, delay))
    print(f"kill -9 survived {len(survived)} / {len(landed_points)} points: {survived}")
    print(f"kill -9 points that landed after the stage opened its run: {opened_points}")
    assert len({stage for stage, _ in landed_points}) >= 5, landed_points
    assert len({stage for stage, _ in opened_points}) >= 4, opened_points
    assert survived == landed_points
