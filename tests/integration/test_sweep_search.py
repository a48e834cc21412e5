"""``rkpipe sweep --sweeper optuna``: Hydra's real Optuna sweeper plugin and a real MLflow
store, with the executor faked (each "experiment" logs made-up metrics to its variant's
run through the tracking layer, as the stages would), so the search logic runs in seconds."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from rkpipe.config import compose
from rkpipe.sweep.executor import Job, JobResult

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper absent")
pytestmark = pytest.mark.integration
CONF = Path(__file__).resolve().parents[2] / "conf"


class FakeExecutor:
    """Logs ``ppl_delta_pct`` (per-channel is better) and ``decode_tok_per_s`` (more threads
    are faster) to each job's variant run, as the pipeline's stages would."""

    name = "fake"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.batches: list[list[str]] = []

    def run(self, jobs: Sequence[Job], env: Mapping[str, str]) -> list[JobResult]:
        from rkpipe.tracking import stage_run

        self.batches.append([j.name for j in jobs])
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            for job in jobs:
                cfg = compose(CONF, job.overrides)
                with stage_run(cfg, "report") as run:
                    ppl_delta = 10.0 if cfg.quant.ort.per_channel else 60.0
                    run.log_metrics({
                        "ppl_delta_pct": ppl_delta, "ppl": 30.0 * (1 + ppl_delta / 100),
                        "decode_tok_per_s": 10.0 * cfg.bench.threads, "peak_rss_mb": 450.0,
                    })  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return [JobResult(j.name, "success") for j in jobs]


def test_optuna_search_runs_valid_trials_and_logs_the_pareto_front(tmp_path, monkeypatch):
    from rkpipe.sweep.search import Objective, run_search
    from rkpipe.tracking.store import Store

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store, executor = Store(root=tmp_path), FakeExecutor(jobs=2)
    arguments = [
        "quant=choice(ort_int8,ort_int8_per_channel,w8a8)", "bench.threads=range(1,4)",
        "experiment=smoke",
    ]  # fmt: skip
    objectives = [Objective("ppl_delta_pct", "minimize"), Objective("decode_tok_per_s", "maximize")]
    parent, plan, children, out = run_search(
        tmp_path, CONF, arguments, executor, store, objectives, n_trials=8, seed=0,
        report_dir=tmp_path / "report",
    )  # fmt: skip
    assert all(len(batch) <= 2 for batch in executor.batches)
    assert plan.variants and len(children) == len(plan.variants)
    assert {c.run_id for c in store.children(parent)} == {r for r in children.values() if r}
    for rejected in plan.rejected:  # w8a8 needs a SoC: never run, reason kept
        assert "quant=w8a8" in rejected.overrides and "needs a SoC" in rejected.reason
    results = store.read_artifact(parent, "sweep/optimization_results.yaml")
    assert "solutions" in results and "decode_tok_per_s" not in results  # values, by objective
    best = [v for v in plan.variants if "quant=ort_int8_per_channel" in v.overrides]
    assert best, "the sampler never tried the better quant type"
    assert store.get(parent).status == "FINISHED"
    assert (out / "compare.md").is_file() and (out / "pareto.png").is_file()
    print(results, (out / "compare.md").read_text(), sep="\n")


def test_cli_optuna_defaults_to_accuracy_vs_speed(monkeypatch, tmp_path, capsys):
    from rkpipe import cli
    from rkpipe.sweep import search
    from rkpipe.sweep.plan import SweepPlan

    seen = {}

    def fake_search(repo, config_dir, arguments, executor, store, objectives, *rest):
        seen.update(objectives=objectives, jobs=executor.jobs, arguments=arguments)
        (tmp_path / "optimization_results.yaml").write_text("name: optuna\n")
        return "p" * 32, SweepPlan(tuple(arguments)), {}, tmp_path

    monkeypatch.setattr(search, "run_search", fake_search)
    monkeypatch.setattr(cli, "_store", lambda args: None)
    argv = ["sweep", "--sweeper", "optuna", "-j", "2", "--repo", str(tmp_path), "quant=a,b"]
    assert cli.main(argv) == 0
    assert [(o.metric, o.direction) for o in seen["objectives"]] == [
        ("ppl_delta_pct", "minimize"), ("decode_tok_per_s", "maximize"),
    ]  # fmt: skip
    assert seen["jobs"] == 2 and "name: optuna" in capsys.readouterr().out
