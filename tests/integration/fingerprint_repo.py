"""A temp DVC repo with the project's real host_fingerprint stage, for tests that play two
machines through RKPIPE_CPUINFO (a Xeon with VNNI and AMX, an EPYC with AVX2 only)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
XEON = (
    "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: avx2 fma avx512f avx512_vnni amx_int8\n"
)
EPYC = "model name\t: AMD EPYC 7B12\nflags\t\t: avx2 fma\n"
HOST_STAGE = """
stages:
  host_fingerprint:
    cmd: python stages/host_fingerprint.py
    always_changed: true
    deps: [stages/host_fingerprint.py]
    outs:
      - data/host/host.json:
          labels: [measurement]
      - data/host/board.json:
          labels: [measurement]
"""


def write_cpus(directory: Path) -> dict[str, Path]:
    """Fake /proc/cpuinfo files: ``{"xeon": path, "epyc": path}``."""
    cpus = {"xeon": directory / "xeon", "epyc": directory / "epyc"}
    cpus["xeon"].write_text(XEON)
    cpus["epyc"].write_text(EPYC)
    return cpus


def make_repo(repo: Path, stages_yaml: str, files: dict[str, str]) -> Path:
    """A git + DVC repo: the host_fingerprint stage, then ``stages_yaml`` (more stages, indented
    under ``stages:``), the project's params.yaml with tracking off, and ``files``."""
    (repo / "stages").mkdir(parents=True)
    shutil.copy2(REPO / "stages" / "host_fingerprint.py", repo / "stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "dvc.yaml").write_text(HOST_STAGE + stages_yaml)
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    return repo
