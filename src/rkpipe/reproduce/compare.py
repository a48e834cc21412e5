"""Compare a rebuild with its run: output files by verdict, metrics against the run-to-run
spread, and a host's measurements set apart when the rebuild ran on another host."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.layout import DETAILS_DIR
from rkpipe.reproduce.timings import is_timing

# A timing rebuilt on the same host is "within the run-to-run spread" when it differs from the
# run's by at most SPREAD_SIGMAS of its recorded stddev, or SPREAD_FRACTION of it without one
# (decode speed moves by up to 25 % between runs on a shared 2-vCPU machine).
SPREAD_SIGMAS = 3.0
SPREAD_FRACTION = 0.25


@dataclass
class OutputComparison:
    """Output files sorted by verdict."""

    identical: list[str] = field(default_factory=list)
    timings_only: list[str] = field(default_factory=list)  # JSON equal but for timing keys
    derived: list[str] = field(default_factory=list)  # markdown reports embedding timings
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded, not rebuilt
    extra: list[str] = field(default_factory=list)  # rebuilt, not recorded
    # Files of measurement outputs (metrics, benchmark samples, host facts) whose bytes differ:
    # compared as measurements (compare_metrics), never as artifacts.
    measurements: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No real difference (timings and timing-bearing reports do not count)."""
        return not (self.differ or self.missing)


def _under(path: str, outputs: Iterable[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


def compare_outputs(recorded: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> OutputComparison:
    """Sort the files of two :func:`output_record` results by verdict."""
    result = OutputComparison()
    files, stable = recorded["files"], recorded.get("without_timings", {})
    got_files, got_stable = rebuilt["files"], rebuilt.get("without_timings", {})
    # Records made before measurements were labelled: the rebuilt dvc.yaml says which they are.
    measured = set(recorded.get("measurements", [])) | set(rebuilt.get("measurements", []))
    for path, sha in files.items():
        got = got_files.get(path)
        if got is None or got == "missing":
            result.missing.append(path)
        elif got == sha:
            result.identical.append(path)
        elif path in stable and stable[path] == got_stable.get(path):
            result.timings_only.append(path)
        elif _under(path, measured):
            result.measurements.append(path)
        elif path.endswith(".md"):
            result.derived.append(path)
        else:
            result.differ.append(path)
    result.extra = sorted(set(got_files) - set(files))
    return result


@dataclass
class MetricComparison:
    """Metrics sorted by verdict: name -> (recorded, rebuilt).

    On another host (``other_host``) every metric is a measurement of that host and is only
    listed; on the same host, non-timing metrics must be equal and timings are checked
    against the run-to-run spread (``outside_spread`` is reported, not counted).
    """

    equal: dict[str, float] = field(default_factory=dict)
    differ: dict[str, tuple[float, float]] = field(default_factory=dict)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)
    only_recorded: list[str] = field(default_factory=list)
    outside_spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    other_host: dict[str, tuple[float, float]] = field(default_factory=dict)


def within_spread(name: str, recorded: float, rebuilt: float, metrics: Mapping[str, float]) -> bool:
    """Whether a rebuilt timing lies within the run-to-run spread of the recorded one."""
    stddev = metrics.get(f"{name}_stddev")
    tolerance = SPREAD_SIGMAS * stddev if stddev else SPREAD_FRACTION * abs(recorded)
    return abs(rebuilt - recorded) <= tolerance


def compare_metrics(
    recorded: Mapping[str, float],
    rebuilt: Mapping[str, float],
    same_host: bool = True,
    host_dependent: Iterable[str] = (),
) -> MetricComparison:
    """Compare the run's metrics with the rebuilt ones (see :class:`MetricComparison`).

    On another host, the timings and the ``host_dependent`` metrics (those of the stages that
    measure on the host: PPL, KLD ...) are listed apart; the rest (sizes, counts) must still
    be equal."""
    result = MetricComparison()
    measured_here = set(host_dependent)
    for name, value in sorted(recorded.items()):
        if name not in rebuilt:
            result.only_recorded.append(name)
        elif not same_host and (name in measured_here or is_timing(name)):
            result.other_host[name] = (value, rebuilt[name])
        elif is_timing(name):
            result.timings[name] = (value, rebuilt[name])
            if not name.endswith(("_stddev", "_min", "_max", "_p90")) and not within_spread(
                name, value, rebuilt[name], recorded
            ):
                result.outside_spread[name] = (value, rebuilt[name])
        elif float(value) == float(rebuilt[name]) or (
            math.isnan(value) and math.isnan(rebuilt[name])
        ):
            result.equal[name] = value
        else:
            result.differ[name] = (value, rebuilt[name])
    return result


def metrics_from_files(metrics_dir: Path) -> dict[str, float]:
    """The numeric entries of every ``*.json`` in ``metrics_dir`` and its ``details/`` (what
    the stages logged)."""
    metrics: dict[str, float] = {}
    for path in [
        *sorted(metrics_dir.glob("*.json")),
        *sorted(metrics_dir.glob(f"{DETAILS_DIR}/*.json")),
    ]:
        metrics |= metrics_in(path)
    return metrics


def metrics_in(path: Path) -> dict[str, float]:
    """The numeric entries of one metrics file ({} when it is missing or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
