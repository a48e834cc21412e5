"""rkpipe reproduce knows a measurement from an artifact: a second host rebuilds a run with real
DVC (in a clean worktree, from a real MLflow record) and gets REPRODUCED for its artifacts,
with its measurements (host facts, metrics whose accuracy and timings depend on the CPU)
listed apart; the same host compares them, and a real difference there still fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fingerprint_repo import make_repo, write_cpus

from rkpipe.hostinfo import provenance, provenance_tags
from rkpipe.reproduce import output_record, render_result, reproduce

pytestmark = pytest.mark.integration
STAGES = """
  build:
    cmd: python build.py
    deps: [build.py]
    outs: [models/weights.bin]
    metrics:
      - metrics/build.json:
          cache: false
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py, models/weights.bin, data/host/host.json]
    metrics:
      - metrics/evaluate.json:
          cache: false
    plots:
      - reports/samples.json:
          cache: false
"""
BUILD = """import json, os
os.makedirs("models", exist_ok=True); os.makedirs("metrics", exist_ok=True)
open("models/weights.bin", "wb").write(bytes(range(256)))
json.dump({"size_mb": 0.000256}, open("metrics/build.json", "w"))
"""
# PPL depends on the CPU's int8 kernels (as ort_int8's 48.16 vs 46.88); the timing is noise.
EVALUATE = """import json, os, random
cpu = json.load(open("data/host/host.json"))["cpu"]["model"]
os.makedirs("metrics", exist_ok=True); os.makedirs("reports", exist_ok=True)
ppl = 46.88 if "EPYC" in cpu else 48.16
json.dump({"ppl": ppl, "ttft_ms": 60 + random.random(), "ttft_ms_stddev": 2.0}, open("metrics/evaluate.json", "w"))
json.dump([{"rep": 0, "ttft_ms": random.random()}], open("reports/samples.json", "w"))
"""


def git(repo: Path, *args: str) -> str:
    argv = ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args]
    return subprocess.run(argv, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def built_run(tmp_path, monkeypatch):
    """A repo whose variant was built and recorded on the Xeon, and its MLflow run."""
    from rkpipe.tracking import make_client
    from rkpipe.tracking.store import Store

    cpus = write_cpus(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("RKPIPE_CPUINFO", str(cpus["xeon"]))
    repo = make_repo(tmp_path / "repo", STAGES, {"build.py": BUILD, "evaluate.py": EVALUATE})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    subprocess.run(["dvc", "repro"], cwd=repo, check=True, capture_output=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "variant")
    host = json.loads((repo / "data/host/host.json").read_text())
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())

    store = Store(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", root=tmp_path)
    client = make_client(store.uri)
    run_id = client.create_run(store.experiment_id("rkpipe"), run_name="variant").info.run_id
    tags = {"git.sha": git(repo, "rev-parse", "HEAD"), "git.dirty": "false"}
    tags |= provenance_tags("evaluate", provenance(host))  # as the evaluate stage tags the run
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = json.loads((repo / "metrics/build.json").read_text()) | metrics
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_dict(run_id, output_record(repo, params), "outputs/sha256.json")
    client.log_text(run_id, (repo / "params.yaml").read_text(), "dvc/params.yaml")
    return repo, store, run_id, cpus, monkeypatch, client


def test_a_second_host_reproduces_the_artifacts_and_lists_its_measurements_apart(built_run):
    repo, store, run_id, cpus, monkeypatch, _ = built_run
    monkeypatch.setenv("RKPIPE_CPUINFO", str(cpus["epyc"]))
    result = reproduce(run_id, repo, store)
    text = render_result(result)
    assert result.ok, text
    assert result.outputs.identical == ["metrics/build.json", "models/weights.bin"]
    assert not result.outputs.differ
    assert set(result.outputs.measurements) >= {"data/host/host.json", "metrics/evaluate.json"}
    assert result.hosts[0] != result.hosts[1] and all(result.hosts)
    assert result.metrics.other_host["ppl"] == (48.16, 46.88) and not result.metrics.differ
    assert result.metrics.equal["size_mb"] == 0.000256  # a fact of the artifact: still compared
    assert "made on another host" in text and "REPRODUCED: byte-identical artifacts" in text


def test_the_same_host_compares_measurements(built_run):
    repo, store, run_id, cpus, monkeypatch, _ = built_run
    result = reproduce(run_id, repo, store)
    assert result.ok and result.hosts[0] == result.hosts[1]
    assert result.metrics.equal == {"ppl": 48.16, "size_mb": 0.000256}
    assert not result.metrics.other_host
    assert "ttft_ms" in result.metrics.timings and not result.metrics.outside_spread
    assert "measurements (same host" in render_result(result)


def test_a_real_artifact_difference_still_fails(built_run):
    repo, store, run_id, cpus, monkeypatch, client = built_run
    record = json.loads(store.read_artifact(run_id, "outputs/sha256.json"))
    record["files"]["models/weights.bin"] = "0" * 64  # what another build of it recorded
    client.log_dict(run_id, record, "outputs/sha256.json")
    monkeypatch.setenv("RKPIPE_CPUINFO", str(cpus["epyc"]))  # even from another host
    result = reproduce(run_id, repo, store)
    assert not result.ok and result.outputs.differ == ["models/weights.bin"]
    assert "NOT REPRODUCED" in render_result(result)
