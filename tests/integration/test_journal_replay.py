"""Replaying a journal into a real MLflow store: a run opened while the server was down is
created on replay with everything the stage logged, an unreadable entry is named and skipped
while the rest replays, and a stage that died while journaling is closed as KILLED."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rkpipe.config import compose, variant_id
from rkpipe.tracking.handle import VariantRun
from rkpipe.tracking.journal import Journal

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    from rkpipe.tracking import make_client, tracking_uri

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_client(tracking_uri(None, tmp_path))


def journaled_stage(store, tmp_path, cfg, stage: str, close: bool = True) -> Journal:
    """What a stage writes when the server is down from its start (lifecycle._journaled_stage)."""
    from rkpipe.tracking import redact_uri, run_name, variant_tags

    journal = Journal(tmp_path, variant_id(cfg), redact_uri(store.tracking_uri))
    journal.append(stage, "open", {
        "experiment": cfg.tracking.experiment, "run_name": run_name(cfg),
        "tags": variant_tags(cfg), "parent": None,
    })  # fmt: skip
    run = VariantRun(None, "", stage, journal)
    run.start_journaling("server down")
    run.log_params({"quant.dtype": "int8"})
    run.log_metrics({"ppl": 30.5}, timestamp_ms=1000)
    run.set_tags({"board.soc": "rk3588"})
    if close:
        journal.append(stage, "close", {"status": "FINISHED"})
    return journal


def test_a_corrupt_entry_is_named_and_the_rest_replays(store, tmp_path):
    from rkpipe.tracking.sync import replay_journals

    cfg = compose(CONF)
    journal = journaled_stage(store, tmp_path, cfg, "evaluate")
    bad = journal.folder / "00000003.json"  # the log_metrics entry, cut short by a full disk
    bad.write_text('{"seq": 3, "op": "log_met')
    done = replay_journals(store, tmp_path)
    assert done.applied == 3 and done.runs == 1  # params, tags, close
    (line,) = done.unreadable
    assert str(bad) in line and "move it out of" in line
    experiment = store.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = store.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["quant.dtype"] == "int8"
    assert run.data.tags["board.soc"] == "rk3588" and "ppl" not in run.data.metrics
    assert run.data.tags["rkpipe.stage.evaluate"] == "finished"
    assert [p.name for p in journal.folder.glob("[0-9]*.json")] == [bad.name]


def test_a_stage_that_died_while_journaling_is_closed_killed(store, tmp_path):
    from rkpipe.tracking.sync import replay_journals

    cfg = compose(CONF)
    journal = journaled_stage(store, tmp_path, cfg, "deploy_bench", close=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for entry in journal.entries():  # written by a process that is gone now
        entry.path.write_text(entry.path.read_text().replace(f'"pid": {entry.data["pid"]}',
                                                             f'"pid": {dead}'))  # fmt: skip
    replay_journals(store, tmp_path)
    experiment = store.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = store.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED" and run.data.metrics["ppl"] == 30.5
    assert run.data.tags["rkpipe.stage.deploy_bench.history"] == "killed"


def test_the_next_stage_replays_the_journal_before_it_logs(store, tmp_path):
    """No `rkpipe sync` needed: a stage that reaches the store replays what earlier stages
    journaled first, so the run holds both, in order."""
    from rkpipe.tracking import stage_run

    cfg = compose(CONF)
    journal = journaled_stage(store, tmp_path, cfg, "evaluate")
    with stage_run(cfg, "deploy_bench") as run:
        run.log_metrics({"ttft_ms": 95.0})
    assert journal.entries() == []
    experiment = store.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = store.search_runs([experiment.experiment_id])
    assert run.data.metrics == {"ppl": 30.5, "ttft_ms": 95.0}
    assert run.data.tags["rkpipe.stage.evaluate"] == run.data.tags["rkpipe.stage.deploy_bench"]
    assert run.data.tags["rkpipe.stage.evaluate"] == "finished" and run.info.status == "FINISHED"
