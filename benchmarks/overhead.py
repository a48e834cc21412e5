"""Overhead of a no-op `dvc repro` against `dvc status` on this pipeline, measured side by side.

Run after a complete `dvc repro` (so every stage is up to date):
    python benchmarks/overhead.py [--rounds 7]
Prints the medians and the ratio repro/status. Target: <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    if argv[1] == "repro" and "Running stage" in out.stdout:
        sys.exit("the pipeline is not up to date: run `dvc repro` first")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    repro, status = [], []
    timed(["dvc", "status"])  # warm the file-system and import caches once
    for _ in range(rounds):  # alternate, so machine noise hits both alike
        repro.append(timed(["dvc", "repro"]))
        status.append(timed(["dvc", "status"]))
    r, s = statistics.median(repro), statistics.median(status)
    print(f"no-op dvc repro: median {r:.3f} s over {rounds} runs (min {min(repro):.3f})")
    print(f"dvc status     : median {s:.3f} s over {rounds} runs (min {min(status):.3f})")
    print(f"ratio repro/status: {r / s:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
