"""Parallel writers on one SQLite MLflow store (what ``dvc queue start -j N`` does), and the
sweep's parent/child layout across processes. Real MLflow, temp store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rkpipe.config import compose, variant_id

pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"
WORKERS, STAGES, METRICS = 4, 3, 40

WRITER = (
    textwrap.dedent(
        """
    import sys
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.tracking import stage_run
    conf, reps = Path(sys.argv[1]), int(sys.argv[2])
    cfg = compose(conf, [f"bench.repetitions={reps}"])
    for stage in range(STAGES):
        with stage_run(cfg, f"stage{stage}") as run:
            for i in range(METRICS):
                run.log_metrics({f"s{stage}_m{i}": i * reps})
            run.set_tags({f"t{stage}": reps})
    """
    )
    .replace("STAGES", str(STAGES))
    .replace("METRICS", str(METRICS))
)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from rkpipe.tracking.store import Store

    return Store(root=tmp_path)


def test_parallel_writers_lose_nothing_and_children_find_their_parent(store, tmp_path):
    cfg = compose(CONF)
    parent = store.create_run(cfg.tracking.experiment, "sweep|test", {"rkpipe.kind": "sweep"})
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = os.environ | {"DVC_ROOT": str(tmp_path), "RKPIPE_PARENT_RUN_ID": parent}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(CONF), str(reps)],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for reps in range(1, WORKERS + 1)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS, "\n".join(errors)[-3000:]
    children = store.children(parent)
    assert len(children) == WORKERS
    for reps in range(1, WORKERS + 1):
        variant = variant_id(compose(CONF, [f"bench.repetitions={reps}"]))
        run = store.find_variant(cfg.tracking.experiment, variant)
        assert run is not None and run.status == "FINISHED" and run.parent_id == parent
        expected = {f"s{s}_m{i}": float(i * reps) for s in range(STAGES) for i in range(METRICS)}
        logged = {k: v for k, v in run.metrics.items() if not k.startswith("stage_")}
        assert logged == expected
        assert {run.tags[f"t{s}"] for s in range(STAGES)} == {str(reps)}
        assert run.tags["rkpipe.sweep"] == parent
        assert run.tags["version.onnxruntime"] and run.tags["rkpipe.package_dir"]


def test_store_reads_artifacts_and_refuses_unknown_runs(store):
    from rkpipe.errors import TrackingError

    run = store.create_run("rkpipe", "r", {})
    store.log_dict(run, {"a": 1}, "outputs/sha256.json")
    store.log_text(run, "x: 1\n", "dvc/params.yaml")
    assert store.read_artifact(run, "outputs/sha256.json").strip() == '{\n  "a": 1\n}'
    assert store.read_artifact(run, "dvc/params.yaml") == "x: 1\n"
    assert store.read_artifact(run, "nope.json") is None
    with pytest.raises(TrackingError, match="no run 'deadbeef' in the MLflow store"):
        store.get("deadbeef")


def test_workers_opening_a_fresh_store_at_once_do_not_race(tmp_path):
    """The first use creates the schema (alembic); two workers doing it at once used to
    fail with 'table _alembic_tmp_experiments already exists'."""
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from rkpipe.tracking import make_client; make_client({uri!r}).search_experiments()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        for _ in range(WORKERS)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS, "\n".join(errors)[-3000:]


def test_a_variant_restored_entirely_from_the_run_cache_is_backfilled_and_linked(store, tmp_path):
    """No stage ran (DVC restored everything), so nothing was logged: the driver creates
    the child run from the metrics committed in the experiment and links it."""
    import json

    from rkpipe.sweep.driver import link_child
    from rkpipe.sweep.executor import JobResult
    from rkpipe.sweep.plan import Variant

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps({"ppl": 31.5, "note": "x"}))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "exp"], cwd=tmp_path, check=True)
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    cfg = compose(CONF, ["bench.repetitions=7"])
    variant = Variant(("bench.repetitions=7",), variant_id(cfg), cfg)
    parent = store.create_run("rkpipe", "sweep", {})
    child = link_child(store, tmp_path, parent, variant, JobResult("sw-x-00", "success", rev))
    run = store.get(child)
    assert run.metrics == {"ppl": 31.5} and run.parent_id == parent
    assert run.params["bench.repetitions"] == "7" and "gates.enabled" not in run.params
    assert run.tags["rkpipe.backfilled"] and run.tags["rkpipe.overrides"] == "bench.repetitions=7"
    assert store.read_artifact(child, "dvc/dvc.lock") == "schema: '2.0'\n"
    failed = JobResult("sw-x-01", "failed")
    other = Variant(("bench.repetitions=8",), "nope", compose(CONF, ["bench.repetitions=8"]))
    assert link_child(store, tmp_path, parent, other, failed) is None
