"""``rkpipe sweep``: plan, open an MLflow parent run, run the variants through an
executor, link each variant's run to the parent, and summarise.

The parent id reaches the stages through ``RKPIPE_PARENT_RUN_ID`` (the tracking layer
tags the variant's run with ``mlflow.parentRunId``). Because a DVC queue worker may have
been started by someone else, and because a variant whose every stage came from DVC's
run cache logs nothing at all, the driver also links each child after its experiment
ends (idempotent), and records its overrides and experiment commit there.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.sweep.executor import Executor, Job, JobResult, SweepError
from rkpipe.sweep.plan import SweepPlan, Variant, describe

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep produced: parent run, per-variant outcome and child run, the report."""

    parent_run_id: str
    plan: SweepPlan
    jobs: list[JobResult]
    children: dict[str, str | None]  # variant id -> child run id
    report_dir: Path
    wall_s: float
    gate_failed: list[str] = field(default_factory=list)  # child run ids

    @property
    def ok(self) -> bool:
        """Every job succeeded and has a child run."""
        return all(j.ok for j in self.jobs) and all(self.children.values())


def job_name(parent_run_id: str, index: int) -> str:
    """A DVC experiment name for the ``index``-th variant of a sweep (a valid git ref)."""
    return f"sw-{parent_run_id[:8]}-{index:02d}"


def start_parent(
    store: Any, plan: SweepPlan, executor: Executor, name: str | None, base_cfg: Any = None,
    kind: str = "grid",
) -> str:  # fmt: skip
    """Create the sweep's parent run holding its definition; returns its id.

    ``base_cfg`` names the model and MLflow experiment (default: the first variant's).
    """
    base = base_cfg or plan.variants[0].cfg
    stamp = time.strftime("%Y%m%d-%H%M%S")
    count = f"{len(plan.variants)} variants" if kind == "grid" else kind
    run_name = name or f"sweep|{base.model.name}|{count}|{stamp}"
    tags = {
        "rkpipe.kind": "sweep", "sweep.sweeper": kind, "model": base.model.name,
        "executor": executor.name, "sweep.arguments": " ".join(plan.arguments)[:5000],
    }  # fmt: skip
    parent = store.create_run(base.tracking.experiment, run_name, tags)
    store.log_params(parent, {
        "sweep.arguments": " ".join(plan.arguments), "sweep.executor": executor.name,
        "sweep.sweeper": kind, "sweep.jobs": getattr(executor, "jobs", 1),
        "sweep.variants": len(plan.variants), "sweep.rejected": len(plan.rejected),
        "sweep.duplicates": len(plan.duplicates),
    })  # fmt: skip
    store.log_dict(parent, plan.definition(), "sweep/definition.json")
    store.log_text(parent, describe(plan), "sweep/plan.txt")
    return parent


def _git_show(repo: Path, rev: str, path: str) -> str | None:
    out = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def _metrics_at(repo: Path, rev: str, metrics_dir: str) -> dict[str, float]:
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:{metrics_dir}"], cwd=repo,
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    metrics: dict[str, float] = {}
    for name in (n for n in names if n.endswith(".json")):
        data = json.loads(_git_show(repo, rev, f"{metrics_dir}/{name}") or "{}")
        if isinstance(data, dict):
            metrics |= {k: v for k, v in data.items() if isinstance(v, (int, float))}
    return metrics


def _backfill(store: Any, repo: Path, variant: Variant, rev: str) -> str:
    """Create the run of a variant DVC restored entirely from its run cache (no stage ran,
    so nothing was logged), from the metrics committed in its experiment."""
    from rkpipe.config import config_dict, flatten
    from rkpipe.tracking import UNTRACKED_KEYS, run_name, variant_tags

    cfg = variant.cfg
    run = store.create_run(cfg.tracking.experiment, run_name(cfg), variant_tags(cfg))
    params = {k: v for k, v in config_dict(cfg).items() if k not in UNTRACKED_KEYS}
    store.log_params(run, flatten(params))
    store.log_metrics(run, _metrics_at(repo, rev, cfg.paths.metrics_dir))
    store.set_tags(run, {"rkpipe.backfilled": "from the experiment commit (all stages cached)"})
    store.terminate(run, "FINISHED")
    return run


def link_child(
    store: Any, repo: Path, parent: str, variant: Variant, result: JobResult
) -> str | None:
    """Make the variant's run a child of ``parent`` and record its overrides and
    experiment; backfill the run when none exists. None when the job failed before any
    run was created."""
    from rkpipe.tracking import parent_tags

    found = store.find_variant(variant.cfg.tracking.experiment, variant.variant_id)
    if found is None and not (result.ok and result.exp_rev):
        return None
    run = found.run_id if found else _backfill(store, repo, variant, str(result.exp_rev))
    tags = parent_tags(parent) | {
        "rkpipe.overrides": " ".join(variant.overrides)[:5000], "dvc.exp_name": result.name,
        "dvc.exp_rev": result.exp_rev or "none", "rkpipe.sweep.status": result.status,
    }  # fmt: skip
    store.set_tags(run, tags)
    lock = _git_show(repo, result.exp_rev, "dvc.lock") if result.exp_rev else None
    if lock:
        store.log_text(run, lock, "dvc/dvc.lock")
    return run


def summarise(
    store: Any, parent: str, run_ids: Sequence[str], gates: Any, out_dir: Path
) -> tuple[Any, Path | None]:
    """Compare the child runs (the first is the baseline), tag gate results on each, write
    compare.md, compare.csv and pareto.png to ``out_dir`` and log them to the parent."""
    from rkpipe.report.compare import compare_runs, gate_tags
    from rkpipe.report.pareto import plot_pareto

    rules = gates.rules if gates.enabled else {}
    comparison = compare_runs([store.get(r) for r in run_ids], rules=rules)
    if rules:
        for row in comparison.rows:
            store.set_tags(row.run_id, gate_tags(row.gates))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(comparison.to_markdown(), encoding="utf-8")
    (out_dir / "compare.csv").write_text(comparison.to_csv(), encoding="utf-8")
    png = plot_pareto(comparison, out_dir / "pareto.png")
    for path in (out_dir / "compare.md", out_dir / "compare.csv", png):
        if path is not None:
            store.log_artifact(parent, path, "compare")
    return comparison, png


def _finish(
    store: Any, parent: str, plan: SweepPlan, jobs: list[JobResult], children: dict, wall: float
) -> None:
    summary = {
        "variants": [
            {"overrides": list(v.overrides), "variant": v.variant_id, "experiment": j.name,
             "status": j.status, "exp_rev": j.exp_rev, "run_id": children.get(v.variant_id),
             "log_tail": j.log_tail if not j.ok else ""}
            for v, j in zip(plan.variants, jobs, strict=True)
        ],
        "rejected": plan.definition()["rejected"], "wall_s": round(wall, 1),
    }  # fmt: skip
    store.log_dict(parent, summary, "sweep/summary.json")
    store.log_metrics(parent, {
        "sweep_variants": len(plan.variants), "sweep_succeeded": sum(j.ok for j in jobs),
        "sweep_failed": sum(not j.ok for j in jobs), "sweep_rejected": len(plan.rejected),
        "sweep_wall_s": wall,
    })  # fmt: skip


def run_sweep(
    repo: Path, plan: SweepPlan, executor: Executor, store: Any, name: str | None = None,
    report_dir: Path | None = None,
) -> SweepResult:  # fmt: skip
    """Run every valid variant of ``plan`` through ``executor`` under one MLflow parent run.

    Raises :class:`SweepError` when the plan has no valid variant. The parent ends
    FINISHED when every variant succeeded, FAILED otherwise, KILLED on Ctrl-C.
    """
    from rkpipe.tracking import PARENT_ENV

    if not plan.variants:
        raise SweepError("no valid variant to run:\n" + describe(plan))
    start = time.perf_counter()
    parent = start_parent(store, plan, executor, name)
    log.info("sweep parent run %s: %d variant(s)", parent, len(plan.variants))
    status = "FAILED"
    try:
        jobs = [Job(job_name(parent, i), v.overrides) for i, v in enumerate(plan.variants)]
        results = executor.run(jobs, {PARENT_ENV: parent})
        children = {
            v.variant_id: link_child(store, repo, parent, v, r)
            for v, r in zip(plan.variants, results, strict=True)
        }
        out_dir = report_dir or Path(tempfile.mkdtemp(prefix="rkpipe-sweep-"))
        run_ids = [r for r in children.values() if r]
        comparison, _ = summarise(store, parent, run_ids, plan.variants[0].cfg.gates, out_dir)
        wall = time.perf_counter() - start
        _finish(store, parent, plan, results, children, wall)
        result = SweepResult(parent, plan, results, children, out_dir, wall)
        result.gate_failed = [row.run_id for row in comparison.gate_failures]
        status = "FINISHED" if result.ok else "FAILED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        store.terminate(parent, status)


def render_summary(result: SweepResult, sequence: Sequence[str] = ()) -> str:
    """Text the CLI prints after a sweep."""
    lines = [f"sweep parent run {result.parent_run_id} ({result.wall_s:.0f} s)"]
    for variant, job in zip(result.plan.variants, result.jobs, strict=True):
        child = result.children.get(variant.variant_id) or "no run"
        lines.append(f"  {job.status:8} {job.name}  run {child}  {' '.join(variant.overrides)}")
        if not job.ok and job.log_tail:
            lines += ["      " + line for line in job.log_tail.splitlines()[-5:]]
    if result.plan.rejected:
        lines.append(f"  {len(result.plan.rejected)} invalid combination(s) skipped (see plan)")
    if result.gate_failed:
        lines.append(f"  gate failures: {', '.join(result.gate_failed)}")
    lines.append(f"report: {result.report_dir}/compare.md, compare.csv, pareto.png")
    return "\n".join([*sequence, *lines])
