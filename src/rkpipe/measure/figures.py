"""Which figures a person reads first, and where every other figure goes.

A stage measures many figures (evaluate about 80, deploy_bench about 70), and both DVC and
MLflow show every one they are given: ``dvc metrics show`` printed 183 columns and an MLflow
run charted 203 metrics. So each stage publishes its figures in two tiers:

- the **headline** (accuracy, speed, size, memory) goes to the stage's declared metrics file,
  ``metrics/<name>.json``, the one ``dvc metrics show`` and ``dvc exp show`` print, and is
  logged to the MLflow run first (the runs list's shared view shows the compared ones);
- **every** figure goes to the stage's details file, ``metrics/details/<name>.json`` (a
  DVC-cached output, which the report and ``rkpipe reproduce`` read), and to the MLflow run as
  the artifact ``metrics/<name>.json``. MLflow's metrics also get the figures with a unit, but
  not op counts, sample counts or percentiles, which only the artifact keeps.

The headline names are listed here and nowhere else; ``tests/unit/test_figures.py`` checks
that ``dvc metrics show`` stays within :data:`MAX_METRICS_COLUMNS` for one variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Per metrics file (deploy_bench's is ``bench``), in the order a reader compares them.
HEADLINE: Mapping[str, tuple[str, ...]] = {
    "download_llm": ("float_size_mb", "model_params"),
    "calibrate": ("calib_records",),
    "reference_logits": ("reference_ppl",),
    "quantize_llm": ("size_mb", "quantize_peak_rss_mb", "quantize_s"),
    "quantize_asr": (
        "asr_size_mb",
        "asr_size_ratio",
        "asr_quantize_s",
        "asr_rknn_sim_wer",
        "asr_rknn_sim_wer_delta",
    ),
    "evaluate": (
        "ppl",
        "ppl_delta_pct",
        "kld_mean",
        "top1_agreement",
        "llm_broken",
        "asr_wer",
        "asr_wer_delta",
        "asr_cer",
        "asr_host_rtf",
    ),
    "bench": (
        "ttft_ms",
        "prefill_tok_per_s",
        "decode_tok_per_s",
        "peak_rss_mb",
        "llm_bench_skipped",
        "asr_rtf",
        "asr_peak_rss_mb",
        # the LLM's accuracy measured on the board (rkpipe.evaluate.device), beside evaluate's
        "device_ppl_delta_pct",  # device_ppl itself: the details file (40 columns at most)
        "device_kld_mean",
        "device_top1_agreement",
        "device_eval_missing",
        "device_asr_wer",
    ),
    "report": ("gate",),
}
# The figures people compare across variants: the MLflow runs list's shared view shows them.
COMPARED = (
    "ppl_delta_pct", "kld_mean", "top1_agreement", "device_ppl_delta_pct",
    "device_top1_agreement", "asr_wer", "asr_wer_delta", "ttft_ms",
    "decode_tok_per_s", "peak_rss_mb", "asr_rtf", "size_mb", "asr_size_mb",
)  # fmt: skip
# The columns a variant may add to ``dvc metrics show`` (the path column not counted).
MAX_METRICS_COLUMNS = 40
# Figures only the details file and the MLflow artifact keep: per-op counts of the ASR graphs,
# clip, window and token counts of the evaluation, and the sample count and percentiles of every
# repeated timing (the mean and the stddev stay metrics: ``rkpipe reproduce`` judges a rebuilt
# timing by the recorded stddev).
DETAIL_PREFIXES = ("asr_ops.", "asr_clips", "asr_random_weights")  # the last is a run tag too
DETAIL_SUFFIXES = ("_n", "_min", "_max", "_p50", "_p90", "_count", "_windows", "_tokens")
PROVENANCE = "provenance"


def headline(name: str, figures: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of metrics file ``name`` that ``figures`` has, in reading order."""
    return {key: figures[key] for key in HEADLINE.get(name, ()) if key in figures}


def is_detail(key: str) -> bool:
    """Whether a figure stays out of MLflow's metrics (an op or sample count, a percentile)."""
    return key.startswith(DETAIL_PREFIXES) or key.endswith(DETAIL_SUFFIXES)


def tracked(figures: Mapping[str, Any]) -> dict[str, float]:
    """The numeric figures MLflow logs as metrics (no booleans, no details)."""
    return {
        key: value
        for key, value in figures.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_detail(key)
    }


def publish(
    layout: Any, run: Any, name: str, figures: Mapping[str, Any], provenance: Mapping[str, Any]
) -> None:
    """Write metrics file ``name`` and its details file, then log them to the variant's run.

    The files come first: a tracking server that fails while logging must not lose a figure.
    """
    from rkpipe.io import write_json_atomic

    figures = {k: v for k, v in figures.items() if k != PROVENANCE}
    details = layout.metrics_details(name)
    write_json_atomic(details, figures | {PROVENANCE: dict(provenance)})
    write_json_atomic(
        layout.metrics_file(name), headline(name, figures) | {PROVENANCE: dict(provenance)}
    )
    log_figures(run, name, figures)
    run.log_artifact(details, "metrics")


def log_figures(run: Any, name: str, figures: Mapping[str, Any]) -> None:
    """Log the headline, then the rest of the tracked figures. (MLflow 3's runs list shows no
    metric column by default whatever the order: rkpipe's shared view picks the columns,
    :data:`rkpipe.tracking.client.VIEW_KEY`.)"""
    first = tracked(headline(name, figures))
    run.log_metrics(first)
    run.log_metrics({k: v for k, v in tracked(figures).items() if k not in first})


def read_details(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """``{name: figures}`` of every details file (each stage's full figures)."""
    from rkpipe.io import read_json
    from rkpipe.layout import DETAILS_DIR

    return {
        path.stem: dict(read_json(path))
        for path in sorted((Path(metrics_dir) / DETAILS_DIR).glob("*.json"))
    }
