"""Which metrics and JSON keys are timings: time, throughput or memory of a process, never
reproducible, so reports show them and comparisons never count them."""

from __future__ import annotations

import re
from typing import Any

# Metric names that measure time, throughput or memory of a process: never reproducible.
TIMING = re.compile(r"(_ms|_s|tok_per_s|rtf|speedup|rss_mb)(_|$)")


def is_timing(name: str) -> bool:
    """Whether a metric (or JSON key) measures time, throughput or memory use (a sample
    count such as ``ttft_ms_n`` does not)."""
    return bool(TIMING.search(name)) and not name.endswith("_n")


def strip_timings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: strip_timings(v) for k, v in data.items() if not is_timing(str(k))}
    if isinstance(data, list):
        return [strip_timings(v) for v in data]
    return data
