"""Pareto plots of a sweep: accuracy vs decode tokens/s vs memory, as one PNG.

:func:`pareto_front` is pure (which points no other point beats on every objective);
:func:`plot_pareto` draws two panels from a :class:`~rkpipe.report.compare.Comparison`:
accuracy against decode speed (marker area and colour = peak memory) and accuracy
against memory. Points on the three-objective front are ringed and labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rkpipe.report.compare import Comparison

# Accuracy metrics in order of preference: (comparison key, axis label, lower is better).
ACCURACY = (
    ("ppl", "perplexity (lower is better)", True),
    ("kld_mean", "KLD vs float (lower is better)", True),
    ("top1_agreement", "top-1 agreement with float (higher is better)", False),
    ("asr_wer", "ASR WER (lower is better)", True),
)


def pareto_front(points: Sequence[Sequence[float]], minimise: Sequence[bool]) -> list[bool]:
    """For each point, whether no other point is at least as good on every objective and
    better on one. ``minimise[i]`` says the sense of objective ``i``."""

    def better_or_equal(a: Sequence[float], b: Sequence[float]) -> bool:
        return all((x <= y) if lo else (x >= y) for x, y, lo in zip(a, b, minimise, strict=True))

    front = []
    for i, p in enumerate(points):
        dominated = any(
            better_or_equal(q, p) and tuple(q) != tuple(p) for j, q in enumerate(points) if j != i
        )
        front.append(not dominated)
    return front


def accuracy_axis(comparison: Comparison) -> tuple[str, str, bool] | None:
    """The first accuracy metric every row has, or None."""
    for key, label, lower in ACCURACY:
        if comparison.rows and all(r.values.get(key) is not None for r in comparison.rows):
            return key, label, lower
    return None


def plot_pareto(comparison: Comparison, path: Path, title: str = "") -> Path | None:
    """Write the two-panel PNG to ``path``; None when no row has speed, memory and an
    accuracy metric to plot."""
    axis = accuracy_axis(comparison)
    rows = [
        r
        for r in comparison.rows
        if r.values.get("decode_tok_per_s") is not None and r.values.get("memory_gb") is not None
    ]
    if axis is None or not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label, lower = axis
    speed = [float(r.values["decode_tok_per_s"] or 0) for r in rows]
    memory = [float(r.values["memory_gb"] or 0) for r in rows]
    accuracy = [float(r.values[key] or 0) for r in rows]
    front = pareto_front(list(zip(accuracy, speed, memory, strict=True)), [lower, False, True])
    labels = _labels(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    sizes = [80 + 400 * m / max(memory) for m in memory]
    points = left.scatter(speed, accuracy, s=sizes, c=memory, cmap="viridis", alpha=0.8)
    fig.colorbar(points, ax=left, label="peak memory (GB)")
    right.scatter(memory, accuracy, s=80, c=["tab:red" if f else "tab:gray" for f in front])
    for ax, xs in ((left, speed), (right, memory)):
        _mark_front(ax, xs, accuracy, front)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.3, y=0.15)
    left.set_xlabel("decode tokens/s (higher is better)")
    right.set_xlabel("peak memory, GB (lower is better)")
    fig.suptitle(title or "Pareto front: accuracy vs decode speed vs memory (ringed: on the front)")
    # Points are numbered and named in a key under the plots: variants of one sweep often sit
    # so close that labels written next to them would overlap.
    fig.text(0.01, -0.01, plot_key(labels, front), va="top", ha="left", fontsize=9,
             family="monospace")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_key(labels: Sequence[str], front: Sequence[bool]) -> str:
    """The key under the plots: one line per numbered point, front members marked."""
    return "\n".join(
        f"{number}  {text}{'   (on the front)' if on_front else ''}"
        for number, (text, on_front) in enumerate(zip(labels, front, strict=True), 1)
    )


def _labels(rows: Sequence[Any]) -> list[str]:
    """``quant type @ platform``, plus the run's id where two rows would read the same."""
    plain = [f"{r.text['quant type']} @ {r.text['platform']}" for r in rows]
    return [
        text if plain.count(text) == 1 else f"{text} [{r.run_id[:6]}]"
        for text, r in zip(plain, rows, strict=True)
    ]


def _mark_front(ax: Any, xs: list[float], ys: list[float], front: list[bool]) -> None:
    numbers: dict[tuple[float, float], list[str]] = {}  # points drawn on top of each other
    for number, (x, y, on_front) in enumerate(zip(xs, ys, front, strict=True), 1):
        if on_front:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="tab:red", linewidths=1.5)
        numbers.setdefault((round(x, 3), round(y, 3)), []).append(str(number))
    for (x, y), names in numbers.items():
        ax.annotate(",".join(names), (x, y), textcoords="offset points", xytext=(7, 5), fontsize=9)
