"""A team's tracking server (issue "a team's setup", part 1): ``scripts/services.sh`` starts real
PostgreSQL (Debian's package, initdb + pg_ctl on a loopback port) and ``mlflow server`` on it
with served artifacts; two variants log from parallel processes under one sweep parent with
``tracking=server``, checked through MLflow's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from tracking_services import NO_POSTGRES, rest, running_services, services, tags_of

from rkpipe.config import compose, variant_id

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
pytestmark = [pytest.mark.integration, NO_POSTGRES]
WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.measure.figures import log_figures
    from rkpipe.tracking import stage_run
    conf, uri, quant = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    cfg = compose(conf, ["tracking=server", f"tracking.uri={uri}", f"quant={quant}"])
    with stage_run(cfg, "evaluate") as run:
        log_figures(run, "evaluate", {"ppl": 30.5, "kld_mean": 0.08, "eval_windows": 4})
    with stage_run(cfg, "deploy_bench") as run:
        log_figures(run, "bench", {"ttft_ms": 95.0, "decode_tok_per_s": 17.0, "ttft_ms_p90": 99.0})
        run.set_tags({"board.soc": "rk3588"})
    """
)
QUANTS = ("ort_int8", "ort_int8_per_channel")


@pytest.fixture(scope="module")
def server():
    with running_services() as started:
        yield started


def test_services_come_up_once_and_say_where(server):
    env, uri, said = server
    assert f"tracking.uri={uri}" in said and "postgresql+psycopg://rkpipe@127.0.0.1:" in said
    again = services(env, "up")  # idempotent: the running services are kept
    assert again.returncode == 0 and again.stdout == said
    status = services(env, "status")
    assert status.returncode == 0 and "PostgreSQL up" in status.stdout
    with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
        assert response.status == 200


def test_parallel_variants_log_to_the_server_under_one_parent(server, tmp_path):
    from rkpipe.tracking.client import VIEW_TAG

    env, uri, _ = server
    experiment = rest(uri, "experiments/create", {"name": "rkpipe"})["experiment_id"]
    parent = rest(uri, "runs/create", {
        "experiment_id": experiment, "run_name": "sweep|test",
        "tags": [{"key": "rkpipe.kind", "value": "sweep"}],
    })["run"]["info"]["run_id"]  # fmt: skip
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer_env = env | {"DVC_ROOT": str(tmp_path), "RKPIPE_PARENT_RUN_ID": parent}
    writer_env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(CONF), uri, quant],
            env=writer_env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for quant in QUANTS
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(errors)[-3000:]

    runs = rest(uri, "runs/search", {"experiment_ids": [experiment], "max_results": 100})
    children = [
        r for r in runs["runs"]
        if {t["key"]: t["value"] for t in r["data"].get("tags", [])}.get("mlflow.parentRunId")
        == parent
    ]  # fmt: skip
    assert len(children) == 2
    expected_variants = {variant_id(compose(CONF, [f"quant={q}"])) for q in QUANTS}
    for child in children:
        tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert child["info"]["status"] == "FINISHED"
        assert metrics == {"ppl": 30.5, "kld_mean": 0.08, "ttft_ms": 95.0, "decode_tok_per_s": 17.0}
        assert params["quant.backend"] == "onnxruntime" and params["quant.dtype"]
        assert tags["rkpipe.variant"] in expected_variants and tags["board.soc"] == "rk3588"
        assert tags["rkpipe.stage.evaluate"] == tags["rkpipe.stage.deploy_bench"] == "finished"
    assert {tags_of(c)["rkpipe.variant"] for c in children} == expected_variants
    # rkpipe gave the experiment its kind and shared view on the server too
    url = f"{uri}/api/2.0/mlflow/experiments/get?experiment_id={experiment}"
    with urllib.request.urlopen(url, timeout=30) as response:
        made = json.loads(response.read())["experiment"]
    assert VIEW_TAG in {t["key"] for t in made.get("tags", [])}
    # no SQLite lock file: against a server there is no file to serialise
    assert not list(tmp_path.rglob("*.lock"))


def test_a_busy_port_is_one_line_naming_the_setting(server):
    env, _, _ = server
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        other = env | {
            "RKPIPE_SERVICES_DIR": env["RKPIPE_SERVICES_DIR"] + "-other",
            "RKPIPE_PG_PORT": str(busy.getsockname()[1]),
        }
        out = services(other, "up")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"services: error: port {other['RKPIPE_PG_PORT']} is in use by another program; "
        "set RKPIPE_PG_PORT to a free port"
    ]


# ------------------------------------------------------------------ outage and journal

OUTAGE_STAGE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.measure.figures import log_figures
    from rkpipe.tracking import stage_run
    conf, uri, experiment, stage = sys.argv[1:5]
    cfg = compose(Path(conf), [
        "tracking=server", f"tracking.uri={uri}", f"tracking.experiment={experiment}",
        "tracking.timeout_s=3", "quant=ort_int8",
    ])
    Path("details.json").write_text(json.dumps({"ppl": 30.5, "ppl_n": 4}))
    with stage_run(cfg, stage) as run:
        if stage == "evaluate":
            print("ready", flush=True)
            while not Path("go").exists():
                time.sleep(0.05)
            log_figures(run, "evaluate", {"ppl": 30.5, "kld_mean": 0.08, "eval_windows": 4})
            run.log_artifact(Path("details.json"), "metrics")
        else:
            log_figures(run, "bench", {"ttft_ms": 95.0, "decode_tok_per_s": 17.0})
            run.set_tags({"board.soc": "rk3588"})
            run.log_dict({"tokens": 64}, "bench/summary.json")
    """
)
# Tags that differ between any two runs (process, time, the journal's own bookkeeping).
VOLATILE_TAGS = ("rkpipe.pid", "rkpipe.journal.seq", "mlflow.source.name", "mlflow.user")


def _stage(root: Path, env: dict, uri: str, experiment: str, stage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(root / "stage.py"), str(CONF), uri, experiment, stage],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _variant(root: Path, env: dict, uri: str, experiment: str, kill_server=None) -> float:
    """Run evaluate then deploy_bench; ``kill_server`` is called while evaluate waits.
    Returns the seconds from the kill to the end of evaluate."""
    (root / "go").unlink(missing_ok=True)
    evaluate = _stage(root, env, uri, experiment, "evaluate")
    assert evaluate.stdout.readline().strip() == "ready", evaluate.stderr.read()
    if kill_server:
        kill_server()
    start = time.monotonic()
    (root / "go").touch()
    _, err = evaluate.communicate(timeout=120)
    took = time.monotonic() - start
    assert evaluate.returncode == 0, err[-3000:]
    bench = _stage(root, env, uri, experiment, "deploy_bench")
    _, err = bench.communicate(timeout=120)
    assert bench.returncode == 0, err[-3000:]
    return took


def _run_data(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    history = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
    artifacts = sorted(_artifacts(client, run.info.run_id))
    tags = {k: v for k, v in run.data.tags.items() if k not in VOLATILE_TAGS}
    return {
        "status": run.info.status, "metrics": run.data.metrics, "history": history,
        "params": run.data.params, "tags": tags, "artifacts": artifacts,
    }  # fmt: skip


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_an_outage_during_evaluate_loses_nothing_once_synced(server, tmp_path):
    """The issue's outage test: kill the server by PID during evaluate, finish the stages,
    restart it, replay; the run then equals a run of the same variant with no outage."""
    env, uri, _ = server
    root = tmp_path / "ws"
    root.mkdir()
    (root / "stage.py").write_text(OUTAGE_STAGE)
    stage_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    stage_env["DVC_ROOT"] = str(root)
    _variant(root, stage_env, uri, "steady")
    pid_file = Path(env["RKPIPE_SERVICES_DIR"]) / "mlflow.pid"

    def kill_server() -> None:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)

    delay = _variant(root, stage_env, uri, "outage", kill_server)
    assert delay < 3 + 7, f"evaluate took {delay:.1f} s after the kill"  # tracking.timeout_s=3
    journal = root / ".dvc" / "tmp" / "rkpipe" / "journal"
    (folder,) = journal.iterdir()
    entries = sorted(folder.glob("[0-9]*.json"))
    ops = [json.loads(p.read_text())["op"] for p in entries]
    assert ops[-1] == "close" and "open" in ops and "log_metrics" in ops and "log_artifact" in ops
    kept = tmp_path / "journal-copy"
    shutil.copytree(journal, kept)

    sync = [sys.executable, "-m", "rkpipe.cli", "sync", "--repo", str(root), "--tracking-uri", uri]
    down = subprocess.run(sync, env=stage_env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and "failed within 3 s" not in down.stdout  # still down
    assert "rkpipe sync: error: MLflow tracking server" in down.stderr, down.stderr
    assert services(env, "up").returncode == 0
    synced = subprocess.run(sync, env=stage_env, capture_output=True, text=True, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"replayed {len(entries) - ops.count('open')} journaled call(s)" in synced.stdout
    assert not list(folder.glob("[0-9]*.json"))

    steady, outage = _run_data(uri, "steady"), _run_data(uri, "outage")
    assert outage == steady
    assert outage["status"] == "FINISHED" and outage["metrics"]["ppl"] == 30.5
    assert outage["tags"]["rkpipe.stage.evaluate.history"] == "finished"
    # the artifacts went through the server to its store, not into the checkout
    assert not (root / ".mlflow").exists()
    served = Path(env["RKPIPE_SERVICES_DIR"]) / "mlflow-artifacts"
    assert len(list(served.rglob("details.json"))) == 2  # one per run
    # a replay twice gives the same run: the run's journal.seq tag skips what was applied
    shutil.rmtree(journal)
    shutil.copytree(kept, journal)
    again = subprocess.run(sync, env=stage_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "were there already" in again.stdout, again.stdout
    assert _run_data(uri, "outage") == outage
