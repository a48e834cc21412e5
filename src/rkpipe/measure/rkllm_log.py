"""What the rkllm runtime prints about itself (its performance log), parsed into benchmark rows.

With ``RKLLM_LOG_LEVEL=1`` the runtime prints its version line at ``rkllm_init``
(``rkllm-runtime version: X, rknpu driver version: Y, platform: Z``), the toolkit version the
model was exported with, and after each run a table::

    I rkllm:  Stage         Total Time (ms)  Tokens    Time per Token (ms)      Tokens per Second
    I rkllm:  Prefill       2201.45          321       6.86                     145.81
    I rkllm:  Generate      12419.47         102       121.76                   8.21
    I rkllm:  Peak Memory Usage (GB)
    I rkllm:  6.19

The parsers themselves live in :mod:`rkpipe.engines.rkllm_runner`, which must stay self-contained
because it is copied to a board (with engine_shared.py only); this module re-exports them, so there
is one implementation, and turns tables into the rows the benchmark summaries read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rkpipe.engines.rkllm_runner import (
    abi_for_version,
    parse_perf_table,
    parse_perf_tables,
    parse_runtime_info,
    version_key,
)

__all__ = [
    "abi_for_version",
    "parse_perf_table",
    "parse_perf_tables",
    "parse_runtime_info",
    "table_row",
    "version_key",
]


def _rate(tokens: float, ms: float) -> float:
    return tokens * 1e3 / ms if ms > 0 else 0.0


def table_row(
    table: Mapping[str, Any], *, rep: int, warmup: bool, info: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """One benchmark row (the runners' keys) from a parsed performance table.

    The runtime's prefill time stands in for TTFT (the first token ends the prefill; a
    process that only reads the log cannot time the first callback itself). Rates are
    recomputed from totals and token counts rather than read from the rounded rate column.

    Raises:
        KeyError: the table lacks its Prefill or Generate row.
    """
    prefill_ms, decode_ms = float(table["prefill_ms"]), float(table["generate_ms"])
    prompt, decoded = int(table["prefill_tokens"]), int(table["generate_tokens"])
    row: dict[str, Any] = {
        "kind": "llm",
        "rep": rep,
        "warmup": warmup,
        "ttft_ms": prefill_ms,
        "prefill_ms": prefill_ms,
        "prefill_tok_per_s": _rate(prompt, prefill_ms),
        "decode_ms": decode_ms,
        "decode_tokens": decoded,
        "decode_tok_per_s": _rate(decoded, decode_ms),
        "prompt_tokens": prompt,
        "perf_source": "log_table",
    }
    if "peak_memory_mb" in table:
        row["peak_rss_mb"] = float(table["peak_memory_mb"])
    info = info or {}
    for key in ("runtime_version", "driver_version", "platform", "toolkit_version", "model_dtype"):
        row[key] = info.get(key)
    return row
