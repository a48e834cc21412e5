"""``rkpipe sweep --sweeper optuna``: Hydra's Optuna sweeper plugin over our executor.

The plugin (``hydra-optuna-sweeper``, optuna 2.10) turns the overrides into a search
space (``choice`` -> categorical, ``range`` -> int, ``interval`` -> float), asks Optuna
for a batch of trials and hands their overrides to a Hydra *launcher*. Ours,
:class:`ExecutorLauncher`, validates each trial (an invalid one fails at once, with
the validator's reason, without running), runs the valid ones as DVC experiments
through the executor, links their runs to the sweep's parent, and returns the
objectives read from each child run (e.g. minimise ``ppl_delta_pct``, maximise
``decode_tok_per_s``). With two objectives the study's Pareto front is logged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.errors import ConfigError
from rkpipe.sweep.driver import job_name, link_child, start_parent, summarise
from rkpipe.sweep.executor import Executor, Job, SweepError
from rkpipe.sweep.plan import Rejected, SweepPlan, Variant

log = logging.getLogger(__name__)

# The plugin is the extra "sweep", kept out of .[dev]: it pins optuna 2.10 (2021).
INSTALL_HINT = (
    "install the extra 'sweep' (hydra-optuna-sweeper 1.3.0, which pins optuna 2.10): "
    "pip install -c requirements/constraints.txt -e '.[sweep]'"
)


@dataclass(frozen=True)
class Objective:
    """A metric of the variant's run and its direction (``minimize`` or ``maximize``)."""

    metric: str
    direction: str

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``ppl_delta_pct:minimize`` (or ``:min``/``:max``)."""
        metric, _, direction = text.partition(":")
        direction = {"min": "minimize", "max": "maximize"}.get(direction, direction)
        if direction not in ("minimize", "maximize") or not metric:
            raise ConfigError(f"objective {text!r}: expected METRIC:minimize or METRIC:maximize")
        return cls(metric, direction)


@dataclass
class ExecutorLauncher:
    """A Hydra launcher (``launch(job_overrides, initial_job_idx)``) that runs trials as
    DVC experiments through an executor and returns their objectives."""

    executor: Executor
    config_dir: Path
    repo: Path
    store: Any
    parent: str
    objectives: Sequence[Objective]
    plan: SweepPlan
    children: dict[str, str | None] = field(default_factory=dict)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Validate, run and score one batch of trials (Hydra's Launcher interface)."""
        from hydra.core.utils import JobReturn, JobStatus

        returns, todo = [], []
        for offset, overrides in enumerate(job_overrides):
            variant_or_error = self._variant(tuple(overrides))
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            ret.return_value = variant_or_error
            if isinstance(variant_or_error, Variant):
                todo.append((initial_job_idx + offset, variant_or_error, ret))
            returns.append(ret)
        self._run(todo)
        return returns

    def _variant(self, overrides: tuple[str, ...]) -> Variant | Exception:
        from rkpipe.config import compose, variant_id

        try:
            cfg = compose(self.config_dir, overrides)
        except ConfigError as exc:
            log.warning("trial %s is invalid, not run: %s", " ".join(overrides), exc)
            self.plan.rejected.append(Rejected(overrides, str(exc)))
            return exc
        return Variant(overrides, variant_id(cfg), cfg)

    def _run(self, todo: list[tuple[int, Variant, Any]]) -> None:
        from hydra.core.utils import JobStatus

        from rkpipe.tracking import PARENT_ENV

        fresh = {v.variant_id: (i, v) for i, v, _ in todo if v.variant_id not in self.children}
        jobs = [Job(job_name(self.parent, i), v.overrides) for i, v in fresh.values()]
        results = self.executor.run(jobs, {PARENT_ENV: self.parent}) if jobs else []
        if hasattr(self.executor, "prime"):
            self.executor.prime = False  # shared stages are in the run cache from now on
        for (_, variant), result in zip(fresh.values(), results, strict=True):
            self.plan.variants.append(variant)
            run = link_child(self.store, self.repo, self.parent, variant, result)
            self.children[variant.variant_id] = run if result.ok else None
        for _, variant, ret in todo:
            run = self.children.get(variant.variant_id)
            values = self._objectives(run) if run else None
            if values is None:
                ret.return_value = SweepError(f"no objectives for {' '.join(variant.overrides)}")
            else:
                ret.status, ret.return_value = JobStatus.COMPLETED, values
                if len(values) == 1:
                    ret.return_value = values[0]

    def _objectives(self, run_id: str) -> list[float] | None:
        metrics = self.store.get(run_id).metrics
        if any(o.metric not in metrics for o in self.objectives):
            return None
        return [float(metrics[o.metric]) for o in self.objectives]


def _sweeper(objectives: Sequence[Objective], n_trials: int, n_jobs: int, seed: int) -> Any:
    try:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        raise SweepError(
            f"--sweeper optuna needs the Optuna sweeper plugin: {INSTALL_HINT}"
        ) from None
    sampler = (
        optuna.samplers.NSGAIISampler(seed=seed)
        if len(objectives) > 1
        else optuna.samplers.TPESampler(seed=seed)
    )
    return OptunaSweeperImpl(
        sampler=sampler, direction=[o.direction for o in objectives], storage=None,
        study_name=None, n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=1.0,
        search_space=None, custom_search_space=None, params=None,
    )  # fmt: skip


def run_search(
    repo: Path, config_dir: Path, arguments: Sequence[str], executor: Executor, store: Any,
    objectives: Sequence[Objective], n_trials: int, seed: int = 0, name: str | None = None,
    report_dir: Path | None = None,
) -> tuple[str, SweepPlan, dict[str, str | None], Path]:  # fmt: skip
    """Run an Optuna search; returns (parent run id, the trials as a plan, variant id ->
    child run id, report directory). The parent holds the Pareto front (or best trial)."""
    from omegaconf import OmegaConf

    from rkpipe.config import compose

    sweeper = _sweeper(objectives, n_trials, getattr(executor, "jobs", 1), seed)
    base = compose(config_dir, [a for a in arguments if not _is_sweep(a)])
    plan = SweepPlan(tuple(arguments))
    parent = start_parent(store, plan, executor, name, base_cfg=base, kind="optuna")
    out_dir = report_dir or Path(tempfile.mkdtemp(prefix="rkpipe-search-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    launcher = ExecutorLauncher(executor, config_dir, repo, store, parent, objectives, plan)
    status = "FAILED"
    try:
        sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(out_dir)}}})
        sweeper.launcher, sweeper.hydra_context, sweeper.job_idx = launcher, object(), 0
        sweeper.sweep(list(arguments))
        store.log_artifact(parent, out_dir / "optimization_results.yaml", "sweep")
        store.log_dict(parent, plan.definition(), "sweep/definition.json")
        runs = [r for r in launcher.children.values() if r]
        if runs:
            summarise(store, parent, runs, base.gates, out_dir)
        status = "FINISHED"
    finally:
        store.terminate(parent, status)
    return parent, plan, launcher.children, out_dir


def _is_sweep(override: str) -> bool:
    """Whether an override sweeps (a list, choice, range or interval), by Hydra's parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).is_sweep_override()
