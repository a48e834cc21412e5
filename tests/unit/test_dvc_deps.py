"""dvc.yaml lists the code each stage runs as its deps: every listed path must exist (a moved
module leaves a dangling dep, and `dvc repro` then refuses to run the stage)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_every_code_dependency_in_dvc_yaml_exists():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = [
        f"{name}: {dep}"
        for name, stage in stages.items()
        for dep in stage.get("deps", [])
        if isinstance(dep, str)
        and dep.startswith(("src/", "stages/"))
        and not (REPO / dep).exists()
    ]
    assert missing == []
