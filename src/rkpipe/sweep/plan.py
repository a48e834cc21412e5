"""Expand a sweep's Hydra overrides into variants and filter out the invalid ones.

Expansion is Hydra's own: :class:`OverridesParser` (with a config loader, so ``glob``
sees the config groups) and ``BasicSweeper.split_arguments`` (the cartesian product of
``a,b``, ``choice(...)``, ``range(...)`` and ``glob(...)``). Each combination is then
composed and validated like ``rkpipe params`` does, so a combination the platform
matrix rejects (``quant=w4a16 platform=rk3588``) is listed with the reason before
anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rkpipe.config import PipelineConfig, compose, variant_id
from rkpipe.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A valid combination: its overrides, config and variant hash."""

    overrides: tuple[str, ...]
    variant_id: str
    cfg: PipelineConfig = field(compare=False, repr=False)


@dataclass(frozen=True)
class Rejected:
    """An invalid combination and why (the validator's message)."""

    overrides: tuple[str, ...]
    reason: str


@dataclass
class SweepPlan:
    """What a sweep will run, what it will not, and why."""

    arguments: tuple[str, ...]
    variants: list[Variant] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def definition(self) -> dict[str, object]:
        """A JSON-safe description (logged to the sweep's parent run)."""
        return {
            "arguments": list(self.arguments),
            "variants": [
                {"overrides": list(v.overrides), "variant": v.variant_id} for v in self.variants
            ],
            "rejected": [
                {"overrides": list(r.overrides), "reason": r.reason} for r in self.rejected
            ],
            "duplicates": [{"overrides": list(o), "same_as": vid} for o, vid in self.duplicates],
        }


def expand_overrides(arguments: Sequence[str], config_dir: Path) -> list[tuple[str, ...]]:
    """The grid of override lists Hydra's BasicSweeper would run for ``arguments``.

    Raises :class:`ConfigError` for a malformed override or a sweep type the grid cannot
    expand (``interval(...)`` needs a sampler: use ``--sweeper optuna``).
    """
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from rkpipe.config.loader import normalise_overrides
    from rkpipe.config.registration import register_configs

    register_configs()
    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base=None):
            loader = GlobalHydra.instance().config_loader()
            parser = OverridesParser.create(config_loader=loader)
            parsed = parser.parse_overrides(normalise_overrides(list(arguments)))
            (grid,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as exc:
        raise ConfigError(f"cannot expand sweep {' '.join(arguments)!r}: {exc}") from None
    return [tuple(combination) for combination in grid]


def plan_sweep(arguments: Sequence[str], config_dir: Path) -> SweepPlan:
    """Expand ``arguments``, compose and validate each combination, drop duplicates
    (two override sets that build the same variant). Never raises for an invalid
    combination: it lands in :attr:`SweepPlan.rejected` with the reason."""
    plan = SweepPlan(tuple(arguments))
    seen: dict[str, tuple[str, ...]] = {}
    for overrides in expand_overrides(arguments, config_dir):
        try:
            cfg = compose(config_dir, overrides)
        except ConfigError as exc:
            plan.rejected.append(Rejected(overrides, str(exc)))
            continue
        vid = variant_id(cfg)
        if vid in seen:
            plan.duplicates.append((overrides, vid))
            continue
        seen[vid] = overrides
        plan.variants.append(Variant(overrides, vid, cfg))
    log.info(
        "sweep: %d combinations, %d valid, %d rejected, %d duplicates",
        len(plan.variants) + len(plan.rejected) + len(plan.duplicates),
        len(plan.variants),
        len(plan.rejected),
        len(plan.duplicates),
    )
    return plan


def describe(plan: SweepPlan) -> str:
    """The plan as text: what runs, what is skipped and why."""
    lines = [f"{len(plan.variants)} variant(s) to run:"]
    lines += [f"  {v.variant_id}  {' '.join(v.overrides)}" for v in plan.variants]
    if plan.rejected:
        lines.append(f"{len(plan.rejected)} invalid combination(s) skipped:")
        for r in plan.rejected:
            lines.append(f"  {' '.join(r.overrides)}\n      {r.reason}")
    if plan.duplicates:
        lines.append(f"{len(plan.duplicates)} duplicate(s) skipped (same variant as another):")
        lines += [f"  {' '.join(o)}  = {vid}" for o, vid in plan.duplicates]
    return "\n".join(lines)
