"""What "no half metrics are left" rests on: DVC removes a stage's outputs, its cache: false
metrics file included, before it runs the command, so an evaluate that fails on a broken
variant leaves no metrics/evaluate.json behind (not even the previous variant's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
DVC_YAML = """
stages:
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py]
    metrics:
      - evaluate.json:
          cache: false
"""


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)


def test_a_failing_stage_leaves_no_stale_metrics(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert dvc(tmp_path, "init", "-q").returncode == 0
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "evaluate.py").write_text(
        "import json; json.dump({'ppl': 29.07}, open('evaluate.json', 'w'))\n"
    )
    assert dvc(tmp_path, "repro").returncode == 0
    assert (tmp_path / "evaluate.json").is_file()
    (tmp_path / "evaluate.py").write_text("raise SystemExit('the quantized LLM is broken')\n")
    failed = dvc(tmp_path, "repro")
    assert failed.returncode != 0 and "broken" in failed.stdout + failed.stderr
    assert not (tmp_path / "evaluate.json").exists()
