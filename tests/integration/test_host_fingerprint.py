"""Real DVC: the host_fingerprint stage runs on every repro, and a stage that depends on its
output reruns when the machine changes (a fake CPU without VNNI) and stays cached otherwise,
while a stage that does not depend on it never reruns. The project's dvc.yaml wires exactly
the measuring stages to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fingerprint_repo import REPO, make_repo, write_cpus

pytestmark = pytest.mark.integration
STAGES = """
  build:
    cmd: python -c "open('artifact.txt', 'w').write('weights')"
    outs: [artifact.txt]
  measure:
    cmd: python measure.py
    deps: [measure.py, artifact.txt, data/host/host.json]
    metrics:
      - m.json:
          cache: false
"""
MEASURE = """import json
host = json.load(open("data/host/host.json"))
json.dump({"cpu": host["cpu"]["model"]}, open("m.json", "w"))
"""


def run(argv: list[str], cwd: Path, cpuinfo: Path) -> str:
    env = os.environ | {
        "RKPIPE_CPUINFO": str(cpuinfo),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def ran(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


def test_measuring_stages_rerun_on_another_machine_only(tmp_path):
    cpus = write_cpus(tmp_path)
    xeon, epyc = cpus["xeon"], cpus["epyc"]
    repo = make_repo(tmp_path / "repo", STAGES, {"measure.py": MEASURE})

    assert ran(run(["dvc", "repro"], repo, xeon)) == {"host_fingerprint", "build", "measure"}
    first = (repo / "data/host/host.json").read_bytes()
    assert ran(run(["dvc", "repro"], repo, xeon)) == {"host_fingerprint"}  # same machine: cached
    assert (repo / "data/host/host.json").read_bytes() == first
    assert ran(run(["dvc", "repro"], repo, epyc)) == {"host_fingerprint", "measure"}
    assert "AMD EPYC" in (repo / "m.json").read_text()
    assert ran(run(["dvc", "repro"], repo, epyc)) == {"host_fingerprint"}


def test_the_pipeline_wires_exactly_the_measuring_stages_to_the_fingerprint():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    host = "${paths.data_dir}/host/host.json"
    board = "${paths.data_dir}/host/board.json"
    depends = {name for name, stage in stages.items() if host in stage.get("deps", [])}
    # report only copies figures; the host's two measuring stages rerun, and deploy_bench
    # follows the board's fingerprint (for board=local it names the host's). record follows
    # the report (which changes whenever a figure does) and reads the digests from dvc.lock.
    assert depends == {"reference_logits", "evaluate", "report"}
    assert board in stages["deploy_bench"]["deps"] and board not in stages["evaluate"]["deps"]
    assert stages["host_fingerprint"]["always_changed"] is True
    for name in ("download_llm", "calibrate", "export_llm", "quantize_llm", "quantize_asr"):
        assert host not in stages[name].get("deps", [])
