"""Real MLflow (SQLite store in a temp dir): one run per variant and honest run statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rkpipe.config import compose, variant_id

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from rkpipe.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(None, tmp_path))


def _only_run(client, cfg):
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`rkpipe.variant` = '{variant_id(cfg)}'")
    assert len(runs) == 1
    return runs[0]


def test_stages_of_a_variant_share_one_finished_run(store, tmp_path):
    from rkpipe.tracking import stage_run

    cfg = compose(CONF)
    calib = tmp_path / "calibration.json"
    calib.write_text('[{"input": "hi", "target": "hello"}]')
    with stage_run(cfg, "calibrate") as run:
        run.log_metrics({"calib_records": 64})
        run.log_dataset(calib, "ab" * 32, name="calibration", context="calibration")
    with stage_run(cfg, "evaluate") as run:
        run.log_metrics({"ppl": 23.5})
    got = _only_run(store, cfg)
    assert got.info.status == "FINISHED"
    assert got.data.metrics == {"calib_records": 64.0, "ppl": 23.5}
    assert got.data.params["quant.dtype"] == "int8"
    assert got.data.params["platform.name"] == "host"
    # unique per scheme: the report's quant label, not just backend and dtype
    assert got.data.tags["mlflow.runName"].startswith(
        "smollm2-135m-instruct|ort int8 MatMulNBits (block 32, acc 4, 8-bit embedding)|host|"
    )
    assert got.data.tags["rkpipe.stage.calibrate"] == "finished"
    (dataset,) = store.get_run(got.info.run_id).inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("calibration", "ab" * 18)
    assert got.info.artifact_uri.startswith((tmp_path / ".mlflow" / "artifacts").as_uri())
    other = compose(CONF, ["quant=ort_int8_per_channel"])
    with stage_run(other, "calibrate"):
        pass
    assert _only_run(store, other).info.run_id != got.info.run_id


def test_failing_stage_marks_run_failed(store):
    from rkpipe.tracking import stage_run

    cfg = compose(CONF, ["bench.repetitions=3"])
    with pytest.raises(RuntimeError):
        with stage_run(cfg, "quantize_llm"):
            raise RuntimeError("conversion crashed")
    got = _only_run(store, cfg)
    assert got.info.status == "FAILED"
    assert got.data.tags["rkpipe.stage.quantize_llm"] == "failed"


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.tracking import stage_run
    cfg = compose(Path(sys.argv[1]), ["bench.repetitions=4"])
    with stage_run(cfg, "deploy_bench"):
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _start_stage(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(SCRIPT)
    env = os.environ | {"DVC_ROOT": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(CONF)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "KILLED"), (signal.SIGKILL, "RUNNING")])
def test_killed_stage_is_not_finished(store, tmp_path, sig, status):
    proc = _start_stage(tmp_path)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    cfg = compose(CONF, ["bench.repetitions=4"])
    assert _only_run(store, cfg).info.status == status


def test_run_left_running_by_sigkill_is_closed_as_killed(store, tmp_path):
    from rkpipe.tracking import open_variant_run

    proc = _start_stage(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(0.1)
    cfg = compose(CONF, ["bench.repetitions=4"])
    run_id = open_variant_run(store, cfg)
    run = store.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["rkpipe.killed_stage"] == "deploy_bench"


def test_experiments_open_on_runs_in_the_mlflow_ui(store, tmp_path):
    """MLflow 3's UI shows an experiment without ``mlflow.experimentKind`` in GenAI mode."""
    from rkpipe.tracking import ensure_experiment, stage_run
    from rkpipe.tracking.client import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, VIEW_TAG

    cfg = compose(CONF)
    with stage_run(cfg, "evaluate"):
        pass
    made = store.get_experiment_by_name(cfg.tracking.experiment)
    assert made.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # an experiment made before rkpipe tagged them gets the tag, once
    old = store.create_experiment("made-by-hand")
    assert ensure_experiment(store, "made-by-hand", tmp_path) == old
    assert ensure_experiment(store, "made-by-hand", tmp_path) == old
    assert store.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # and the shared view of the runs list with the headline figures as columns
    view = json.loads(store.get_experiment(old).tags[VIEW_TAG])
    assert "metrics.`ppl_delta_pct`" in view["selectedColumns"]
    assert (
        "metrics.`ttft_ms`" in view["selectedColumns"] and "tags.`gate`" in view["selectedColumns"]
    )
