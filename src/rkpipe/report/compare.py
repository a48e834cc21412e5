"""Compare variant runs side by side (like llama.cpp's ``compare-llama-bench.py``), and
judge them against acceptance gates.

Input is anything shaped like :class:`~rkpipe.tracking.store.RunRecord` (``run_id``,
``name``, ``params``, ``metrics``, ``tags``); output is a :class:`Comparison` that
renders as markdown or CSV. The first run (or the one named as baseline) is the
reference; every other row shows its value and its delta against it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rkpipe.config.labels import quant_label
from rkpipe.evaluate.sanity import BROKEN_METRIC
from rkpipe.hostinfo import measuring_machine
from rkpipe.report import NO_BOARD, llm_bench_skipped, measured_on


class RunLike(Protocol):
    """What a comparison reads from a run."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


@dataclass(frozen=True)
class Column:
    """A numeric column: header, CSV key, how to read it, digits, and the delta it shows
    against the baseline (``pct`` relative, ``abs`` absolute, None)."""

    header: str
    key: str
    read: Callable[[Mapping[str, float]], float | None]
    digits: int = 2
    delta: str | None = "pct"


def _metric(name: str, scale: float = 1.0) -> Callable[[Mapping[str, float]], float | None]:
    def read(metrics: Mapping[str, float]) -> float | None:
        value = metrics.get(name)
        return None if value is None else value * scale

    return read


# The seed's columns (TTFT, tokens/s, memory) then the accuracy columns.
COLUMNS = (
    Column("TTFT (ms)", "ttft_ms", _metric("ttft_ms"), 1),
    Column("tokens/s", "decode_tok_per_s", _metric("decode_tok_per_s"), 1),
    Column("memory (GB)", "memory_gb", _metric("peak_rss_mb", 1 / 1024), 3),
    Column("size (MB)", "size_mb", _metric("size_mb"), 1),
    Column("PPL", "ppl", _metric("ppl"), 2),
    Column("ΔPPL vs float (%)", "ppl_delta_pct", _metric("ppl_delta_pct"), 1, "abs"),
    Column("KLD", "kld_mean", _metric("kld_mean"), 4, "abs"),
    Column("top-1 agree", "top1_agreement", _metric("top1_agreement"), 3, "abs"),
    # The same, measured on the board (deploy_bench, rkpipe.evaluate.device); gates prefer them.
    Column("device ΔPPL (%)", "device_ppl_delta_pct", _metric("device_ppl_delta_pct"), 1, "abs"),
    Column("device top-1", "device_top1_agreement", _metric("device_top1_agreement"), 3, "abs"),
    Column("WER", "asr_wer", _metric("asr_wer"), 3, "abs"),
    Column("ΔWER vs fp32 (pt)", "asr_wer_delta", _metric("asr_wer_delta"), 2, "abs"),
)
TEXT_COLUMNS = ("run", "model", "platform", "quant type", "measured on")
# The columns deploy_bench leaves empty when it skipped the LLM (llm_bench_skipped), and whose
# deltas mean nothing between two machines.
LLM_SPEED_KEYS = ("ttft_ms", "decode_tok_per_s", "memory_gb")
# What a speed cell says when the row was measured on another machine than the baseline.
OTHER_HOST = "other host: not comparable"
BROKEN_GATE = "broken"  # the built-in gate a numerically broken variant fails
BENCH_PROVENANCE = "measured.deploy_bench."


@dataclass(frozen=True)
class GateResult:
    """One gate applied to one run; ``passed`` is None when the metric is absent."""

    name: str
    metric: str
    value: float | None
    minimum: float | None
    maximum: float | None
    passed: bool | None

    def explain(self) -> str:
        """``ppl_delta_pct=66.9 > max 5``, ``asr_wer_delta=0 ok``, or ``... absent``."""
        if self.value is None:
            return f"{self.metric} absent"
        if self.passed is None:  # NaN: not judged
            return f"{self.metric}={self.value} not judged"
        if self.passed:
            return f"{self.metric}={self.value:.4g} ok"
        if self.maximum is not None and self.value > self.maximum:
            return f"{self.metric}={self.value:.4g} > max {self.maximum:g}"
        return f"{self.metric}={self.value:.4g} < min {self.minimum:g}"


def _field(rule: Any, key: str) -> Any:
    return rule.get(key) if isinstance(rule, Mapping) else getattr(rule, key, None)


def judged_metric(metrics: Mapping[str, float], metric: str) -> str:
    """``device_<metric>`` when the board measured it (rkpipe.evaluate.device), else ``metric``:
    a variant is judged by what it does on the device, the host figure being a proxy."""
    device = f"device_{metric}"
    value = metrics.get(device)
    return device if value is not None and not math.isnan(value) else metric


def evaluate_gates(metrics: Mapping[str, float], rules: Mapping[str, Any]) -> list[GateResult]:
    """Apply every rule (``metric``, ``min``, ``max``; a GateRule or a dict) to ``metrics``,
    plus the built-in ``broken`` gate: a variant evaluate kept although it is numerically broken
    (``llm_broken``, eval.keep_broken) fails it whatever the other rules say."""
    results = []
    if metrics.get(BROKEN_METRIC):
        value = float(metrics[BROKEN_METRIC])
        results.append(GateResult(BROKEN_GATE, BROKEN_METRIC, value, None, 0.0, False))
    for name, rule in rules.items():
        metric, low, high = _field(rule, "metric"), _field(rule, "min"), _field(rule, "max")
        metric = judged_metric(metrics, metric)
        value = metrics.get(metric)
        passed = None
        if value is not None and not math.isnan(value):
            passed = (low is None or value >= low) and (high is None or value <= high)
        results.append(GateResult(name, metric, value, low, high, passed))
    return results


def gate_verdict(results: Sequence[GateResult]) -> str:
    """``broken`` if the built-in broken gate failed, ``failed`` if any gate failed, ``passed``
    if all evaluated ones passed, else ``n/a``."""
    if any(r.name == BROKEN_GATE and r.passed is False for r in results):
        return "broken"
    if any(r.passed is False for r in results):
        return "failed"
    return "passed" if any(r.passed for r in results) else "n/a"


def gate_tags(results: Sequence[GateResult]) -> dict[str, str]:
    """MLflow tags: ``gate`` (passed/failed/n/a), ``gate.failed`` (names) and one
    ``gate.<name>`` per rule with its explanation."""
    tags = {"gate": gate_verdict(results)}
    failed = [r.name for r in results if r.passed is False]
    tags["gate.failed"] = ",".join(failed) if failed else "none"
    tags |= {f"gate.{r.name}": r.explain() for r in results}
    return tags


@dataclass
class Row:
    """One run's cells: text, numbers, deltas vs the baseline, its gates, and what an empty
    cell should say instead of a dash (``notes``, e.g. "n/a (no board)")."""

    run_id: str
    text: dict[str, str]
    values: dict[str, float | None]
    deltas: dict[str, float | None] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    baseline: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    # The machine deploy_bench measured on ("" when unknown: runs made before provenance).
    machine: str = ""
    speed_comparable: bool = True


@dataclass
class Comparison:
    """The rows of a comparison; the baseline row first."""

    rows: list[Row]
    columns: tuple[Column, ...] = COLUMNS

    def to_markdown(self) -> str:
        """A markdown table; non-baseline cells show ``value (delta)``."""
        cols = [
            c
            for c in self.columns
            if any(r.values.get(c.key) is not None or c.key in r.notes for r in self.rows)
        ]
        header = [*TEXT_COLUMNS, *(c.header for c in cols), "gates"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for row in self.rows:
            cells = [row.text[t] for t in TEXT_COLUMNS]
            cells += [_cell(row, c) for c in cols]
            cells.append(_gate_cell(row))
            lines.append(_md_row(cells))
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with one value and one delta column per metric (machine-readable names)."""
        out = io.StringIO()
        keys = ["run_id", "run", "model", "platform", "quant_type", "baseline", "measured_on",
                "speed_comparable"]  # fmt: skip
        for c in self.columns:
            keys += [c.key] + ([f"{c.key}_delta_{c.delta}"] if c.delta else [])
        keys += ["gate", "gate_failed"]
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(_csv_record(row, self.columns))
        return out.getvalue()

    @property
    def gate_failures(self) -> list[Row]:
        """Rows that failed at least one gate."""
        return [r for r in self.rows if gate_verdict(r.gates) in ("failed", "broken")]


def _md_row(cells: Sequence[str]) -> str:
    """A markdown table row; ``|`` inside a cell (our run names use it) is escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _cell(row: Row, column: Column) -> str:
    value = row.values.get(column.key)
    if value is None:
        return row.notes.get(column.key, "–")
    text = f"{value:.{column.digits}f}"
    delta = row.deltas.get(column.key)
    if not row.speed_comparable and column.key in LLM_SPEED_KEYS:
        return f"{text} ({OTHER_HOST})"
    if row.baseline or delta is None:
        return text
    unit = " %" if column.delta == "pct" else ""
    return f"{text} ({delta:+.{1 if column.delta == 'pct' else column.digits}f}{unit})"


def _gate_cell(row: Row) -> str:
    verdict = gate_verdict(row.gates)
    if verdict not in ("failed", "broken"):
        return verdict
    failed = "; ".join(r.explain() for r in row.gates if r.passed is False)
    return f"**{verdict.upper()}**: {failed}"


def _csv_record(row: Row, columns: Sequence[Column]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": row.run_id, "run": row.text["run"], "model": row.text["model"],
        "platform": row.text["platform"], "quant_type": row.text["quant type"],
        "baseline": str(row.baseline).lower(), "measured_on": row.machine,
        "speed_comparable": str(row.speed_comparable).lower(),
    }  # fmt: skip
    for c in columns:
        record[c.key] = row.values.get(c.key)
        if c.delta:
            record[f"{c.key}_delta_{c.delta}"] = None if row.baseline else row.deltas.get(c.key)
    record["gate"] = gate_verdict(row.gates)
    record["gate_failed"] = ",".join(r.name for r in row.gates if r.passed is False)
    return record


def _delta(kind: str | None, value: float | None, base: float | None) -> float | None:
    if kind is None or value is None or base is None:
        return None
    if kind == "abs":
        return value - base
    return None if base == 0 else 100.0 * (value - base) / base


def _row(run: RunLike, columns: Sequence[Column], rules: Mapping[str, Any]) -> Row:
    params = run.params
    text = {
        "run": run.name or run.run_id[:8],
        "model": params.get("model.name", "?"),
        "platform": params.get("platform.name", "?"),
        "quant type": quant_label(params),
    }
    values = {c.key: c.read(run.metrics) for c in columns}
    notes = {key: NO_BOARD for key in LLM_SPEED_KEYS} if llm_bench_skipped(run.metrics) else {}
    prefix = len(BENCH_PROVENANCE)
    prov = {k[prefix:]: v for k, v in run.tags.items() if k.startswith(BENCH_PROVENANCE)}
    text["measured on"] = measured_on(prov) if prov else "–"
    return Row(run.run_id, text, values, gates=evaluate_gates(run.metrics, rules), notes=notes,
               machine=measuring_machine(prov))  # fmt: skip


def compare_runs(
    runs: Sequence[RunLike], baseline: int = 0, rules: Mapping[str, Any] | None = None,
    columns: tuple[Column, ...] = COLUMNS,
) -> Comparison:  # fmt: skip
    """Rows for ``runs`` with deltas against ``runs[baseline]`` (placed first) and gate
    results for ``rules`` (``{name: GateRule}``; none when omitted)."""
    if not runs:
        return Comparison([], columns)
    ordered = [runs[baseline], *(r for i, r in enumerate(runs) if i != baseline)]
    rows = [_row(r, columns, rules or {}) for r in ordered]
    rows[0].baseline = True
    for row in rows:
        row.deltas = {
            c.key: _delta(c.delta, row.values.get(c.key), rows[0].values.get(c.key))
            for c in columns
        }
        # Speed from two machines is not a delta of the variants; accuracy deltas stay.
        if row.machine and rows[0].machine and row.machine != rows[0].machine:
            row.speed_comparable = False
            row.deltas |= dict.fromkeys(LLM_SPEED_KEYS)
    return Comparison(rows, columns)
