"""Summary statistics over measured repetitions (warm-ups excluded)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, stddev (sample; 0 for one value), min, max and n of ``values``."""
    return {
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "stddev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": float(len(values)),
    }


def summarize_samples(
    samples: Iterable[Mapping[str, Any]], keys: Sequence[str], prefix: str = ""
) -> dict[str, float]:
    """Flatten :func:`summarize` of each key over non-warm-up samples.

    ``decode_tok_per_s`` becomes ``{prefix}decode_tok_per_s`` (the mean) plus
    ``{prefix}decode_tok_per_s_p50`` etc.
    """
    measured = [s for s in samples if not s.get("warmup")]
    out: dict[str, float] = {}
    for key in keys:
        values = [float(s[key]) for s in measured if key in s]
        if not values:
            continue
        stats = summarize(values)
        out[f"{prefix}{key}"] = stats.pop("mean")
        out.update({f"{prefix}{key}_{name}": value for name, value in stats.items()})
    return out
