"""Overhead of a no-op `dvc repro` against `dvc status` on this pipeline, measured side by side.

Run after a complete `dvc repro` (so every stage is up to date):
    python benchmarks/overhead.py [--rounds 7]
Prints the medians and the ratio repro/status. Target: <= 1.15.

It also times, in the same run, importing networkx (which `dvc repro` imports to order the
stages and `dvc status` does not) against an empty interpreter, to show how much of the
difference is DVC's own fixed cost rather than this pipeline's.
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
    if argv[1:2] == ["repro"] and "Running stage" in out.stdout:
        sys.exit("the pipeline is not up to date: run `dvc repro` first")
    return elapsed


def timed_import(module: str) -> float:
    """Seconds that importing ``module`` adds to an interpreter start."""
    bare = timed([sys.executable, "-c", "pass"])
    return timed([sys.executable, "-c", f"import {module}"]) - bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    repro, status = [], []
    timed(["dvc", "status"])  # warm the file-system and import caches once
    for _ in range(rounds):  # alternate, so machine noise hits both alike
        repro.append(timed(["dvc", "repro"]))
        status.append(timed(["dvc", "status"]))
    networkx = [timed_import("networkx") for _ in range(rounds)]
    r, s = statistics.median(repro), statistics.median(status)
    print(f"no-op dvc repro: median {r:.3f} s over {rounds} runs (min {min(repro):.3f})")
    print(f"dvc status     : median {s:.3f} s over {rounds} runs (min {min(status):.3f})")
    print(f"ratio repro/status: {r / s:.3f} (target <= 1.15)")
    nx = statistics.median(networkx)
    print(f"difference {r - s:.3f} s; importing networkx (repro's stage graph): {nx:.3f} s")


if __name__ == "__main__":
    main()
