"""Wall time of an N-variant ``rkpipe sweep`` vs N x one variant built from scratch.

Two fresh copies of the repository (source only: no outputs, cache or MLflow store):

* ``single``: ``dvc exp run -S experiment=smoke -S <first variant>``, the whole pipeline once;
* ``sweep``: ``rkpipe sweep experiment=smoke <N variants> -j J``: the first variant alone
  (it computes the stages every variant shares), then the rest in parallel, their shared
  stages restored from DVC's run cache.

The ratio sweep / (N x single) is the gain; shared stages are not repeated, so it should be
well under 1. The stage counts come from DVC's own logs (``dvc queue logs``): how often
each stage really ran across the sweep.

DVC saves a stage to its run cache only when every output is cached or declared as a stage
``metrics``/``plots`` entry; a plain ``cache: false`` out (our metrics JSON) keeps the stage
out of the run cache, and queued experiments then recompute it. Unless ``--as-is``, the
copies get that dvc.yaml change (proposed with issue 8) when the repository lacks it.

    python benchmarks/sweep.py [--n 2] [--jobs 2] [--as-is] [--markdown-append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rkpipe.config.schema import PathsConfig
from rkpipe.layout import Layout

REPO = Path(__file__).resolve().parents[1]
SKIP = (".venv", ".mlflow", ".dvc/cache", ".dvc/tmp", "models/", "metrics/", "reports/")
# N variants on the host (onnxruntime): two quantization schemes x benchmark threads.
GRID = {
    1: ["quant=ort_int8"],
    2: ["quant=ort_int8,ort_int8_per_channel"],
    4: ["quant=ort_int8,ort_int8_per_channel", "bench.threads=1,2"],
}


def sh(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; raise with the output's tail on failure."""
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def run_cacheable(dvc_yaml: Path) -> None:
    """Declare ``cache: false`` JSON outs as stage ``metrics`` (``plots`` for samples)."""
    import yaml

    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    for stage in spec["stages"].values():
        kept = []
        for out in stage.get("outs", []):
            path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if opts.get("cache") is False and path.endswith(".json"):
                stage.setdefault("plots" if "samples" in path else "metrics", []).append(out)
            else:
                kept.append(out)
        stage.pop("outs", None)
        if kept:
            stage["outs"] = kept
    dvc_yaml.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")


def fresh_copy(dst: Path, env: dict[str, str], as_is: bool) -> Path:
    """The repository's source files, committed in a new git repo at ``dst``."""
    names = sh(["git", "ls-files", "-co", "--exclude-standard"], REPO, env).stdout.splitlines()
    for name in names:
        if (REPO / name).is_file() and not name.startswith(SKIP) and name != "dvc.lock":
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    layout = Layout.from_paths(PathsConfig(), dst)
    layout.calibration.unlink(missing_ok=True)
    shutil.rmtree(layout.asr_testset, ignore_errors=True)
    if not as_is:
        run_cacheable(dst / "dvc.yaml")
    git = ["git", "-c", "user.email=b@b", "-c", "user.name=bench"]
    sh(["git", "init", "-q"], dst, env)
    sh([sys.executable, "-m", "rkpipe.cli", "params", "experiment=smoke"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh([*git, "commit", "-qm", "bench"], dst, env)
    return dst


def environment(src: Path) -> dict[str, str]:
    """This interpreter's tools first, the copy's own code, no inherited store or DVC vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(src)
    return env


def time_single(root: Path) -> float:
    """Seconds for one variant from scratch (``dvc exp run``)."""
    env = environment(root / "src")
    start = time.perf_counter()
    sh(["dvc", "exp", "run", "-S", "experiment=smoke", "-S", GRID[1][0]], root, env)
    return time.perf_counter() - start


def time_sweep(root: Path, n: int, jobs: int) -> tuple[float, str, dict[str, int]]:
    """Seconds for the N-variant sweep, its parent run id, and how often each stage ran."""
    env = environment(root / "src")
    argv = [
        sys.executable,
        "-m",
        "rkpipe.cli",
        "sweep",
        "experiment=smoke",
        *GRID[n],
        "-j",
        str(jobs),
    ]
    start = time.perf_counter()
    out = sh(argv, root, env)
    wall = time.perf_counter() - start
    parent = re.search(r"sweep parent run ([0-9a-f]{32})", out.stdout).group(1)
    counts: collections.Counter[str] = collections.Counter()
    for index in range(n):
        logs = sh(["dvc", "queue", "logs", f"sw-{parent[:8]}-{index:02d}"], root, env).stdout
        counts.update(re.findall(r"Running stage '(\w+)'", logs))
    return wall, parent, dict(counts)


def render(n: int, jobs: int, single: float, sweep: float, counts: dict[str, int]) -> str:
    """The result as a markdown block."""
    ratio = sweep / (n * single)
    ran = ", ".join(f"{stage} x{count}" for stage, count in sorted(counts.items()))
    return "\n".join([
        "| variants | jobs | one variant (s) | N x one (s) | sweep (s) | ratio |",
        "|---|---|---|---|---|---|",
        f"| {n} | {jobs} | {single:.0f} | {n * single:.0f} | {sweep:.0f} | **{ratio:.2f}** |",
        "",
        f"Stages that ran across the sweep (from `dvc queue logs`): {ran}.",
        f"Grid: `experiment=smoke {' '.join(GRID[n])}`; {os.cpu_count()} CPUs, shared.",
    ])  # fmt: skip


def main() -> None:
    """Time both, print the comparison, optionally append it to a markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, choices=sorted(k for k in GRID if k > 1), default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--markdown-append", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--as-is", action="store_true", help="do not patch dvc.yaml")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rkpipe-bench-sweep-"))
    try:
        env = environment(REPO / "src")
        single_root = fresh_copy(work / "single", env, args.as_is)
        sweep_root = fresh_copy(work / "sweep", env, args.as_is)
        single = time_single(single_root)
        print(f"one variant from scratch: {single:.0f} s", flush=True)
        sweep, parent, counts = time_sweep(sweep_root, args.n, args.jobs)
        print(f"{args.n}-variant sweep (parent run {parent}): {sweep:.0f} s", flush=True)
        text = render(args.n, args.jobs, single, sweep, counts)
        print(text)
        if args.markdown_append:
            with open(args.markdown_append, "a", encoding="utf-8") as handle:
                handle.write("\n" + text + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
