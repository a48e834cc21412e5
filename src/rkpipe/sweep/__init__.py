"""Sweeps over variants: expand Hydra overrides, drop invalid combinations up front, run
each valid variant as a DVC experiment through an :class:`~rkpipe.sweep.executor.Executor`,
and record the sweep as an MLflow parent run whose children are the variants' runs.

``plan`` expands and validates (pure, fast); ``executor`` decides where jobs run (DVC's
local queue, or the workspace); ``driver`` ties them to MLflow; ``search`` runs Hydra's
Optuna sweeper plugin over the same executor.
"""

from rkpipe.sweep.plan import Rejected, SweepPlan, Variant, expand_overrides, plan_sweep

__all__ = ["Rejected", "SweepPlan", "Variant", "expand_overrides", "plan_sweep"]
