"""Benchmark with Rockchip's own ``llm_demo`` binary instead of the ctypes runner.

``llm_demo <model> <max_new_tokens> <max_context_len>`` (``examples/rkllm_api_demo/deploy``)
is what most users measure with. It reads one prompt per line on stdin until ``exit``; with
``RKLLM_LOG_LEVEL=1`` the runtime prints a performance table after each answer. This module
feeds it ``warmup + repetitions`` copies of a fixed prompt in one process (as a user would
type them) and turns the tables into the same rows as the runners.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rkpipe.board.deploy import LLM_KEYS, BenchResult
from rkpipe.board.transport import Transport
from rkpipe.config.schema import BenchConfig
from rkpipe.errors import BoardError
from rkpipe.measure.rkllm_log import parse_perf_tables, parse_runtime_info, table_row
from rkpipe.measure.stats import summarize_samples

log = logging.getLogger(__name__)

PROMPT_WORD = "hello"
# Positional parameters keep every value out of the script text: the transport quotes each.
_FEED_SCRIPT = (
    "demo=$1; model=$2; new=$3; ctx=$4; prompt=$5; runs=$6; i=0; "
    '{ while [ "$i" -lt "$runs" ]; do printf "%s\\n" "$prompt"; i=$((i+1)); done; echo exit; } '
    '| RKLLM_LOG_LEVEL=1 "$demo" "$model" "$new" "$ctx"'
)


def benchmark_prompt(words: int) -> str:
    """The fixed prompt: ``words`` repetitions of one word (the chat template adds tokens)."""
    return " ".join([PROMPT_WORD] * words)


def llm_demo_argv(
    demo: str,
    model: str,
    *,
    prompt: str,
    runs: int,
    max_new_tokens: int,
    max_context_len: int,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv that pipes ``runs`` copies of ``prompt`` and ``exit`` into ``llm_demo``.

    Raises:
        BoardError: the prompt holds a newline (llm_demo reads one prompt per line).
    """
    if "\n" in prompt or "\r" in prompt:
        raise BoardError("an llm_demo prompt must be a single line: llm_demo reads one per line")
    assignments = [f"{key}={value}" for key, value in (env or {}).items()]
    return [
        "env", *assignments, "sh", "-c", _FEED_SCRIPT, "llm_demo",
        demo, model, str(max_new_tokens), str(max_context_len), prompt, str(runs),
    ]  # fmt: skip


def rows_from_output(text: str, *, warmup: int, repetitions: int) -> list[dict[str, Any]]:
    """Rows from llm_demo's output: the last ``warmup + repetitions`` tables, warm-ups first.

    Raises:
        BoardError: fewer tables than runs (the runtime did not honour RKLLM_LOG_LEVEL=1, or
        llm_demo stopped early).
    """
    runs = warmup + repetitions
    tables = parse_perf_tables(text)
    if len(tables) < runs:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise BoardError(
            f"llm_demo printed {len(tables)} performance tables for {runs} prompts "
            f"(needs RKLLM_LOG_LEVEL=1 and a runtime >= 1.1): {tail}"
        )
    info = parse_runtime_info(text)
    plan = [(True, i) for i in range(warmup)] + [(False, i) for i in range(repetitions)]
    rows = []
    for (is_warmup, rep), table in zip(plan, tables[-runs:], strict=True):
        row = table_row(table, rep=rep, warmup=is_warmup, info=info)
        rows.append(row | {"source": "llm_demo"})
    return rows


def bench_llm_demo(
    transport: Transport,
    *,
    demo: str,
    model: str,
    bench: BenchConfig,
    max_context_len: int,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> BenchResult:
    """Run ``llm_demo`` on the board (paths as the board sees them) and summarise its tables.

    ``bench.prompt_tokens`` sets the number of prompt words (the table reports the real
    token count after the chat template), ``bench.new_tokens`` is llm_demo's max_new_tokens.

    Raises:
        BoardError: llm_demo failed, timed out or printed too few tables.
    """
    argv = llm_demo_argv(
        demo,
        model,
        prompt=benchmark_prompt(bench.prompt_tokens),
        runs=bench.warmup + bench.repetitions,
        max_new_tokens=bench.new_tokens,
        max_context_len=max_context_len,
        env=env,
    )
    log.info("running llm_demo %s on %s", model, type(transport).__name__)
    result = transport.run(argv, timeout)
    text = result.stdout + "\n" + result.stderr
    if result.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise BoardError(f"llm_demo exited with {result.returncode}: {tail}")
    rows = rows_from_output(text, warmup=bench.warmup, repetitions=bench.repetitions)
    return BenchResult(rows, summarize_samples(rows, LLM_KEYS))
