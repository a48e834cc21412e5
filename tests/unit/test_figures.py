"""Headline figures in the declared metrics files, every figure in the details files, and the
MLflow run gets the headline first (rkpipe.measure.figures)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from rkpipe.layout import Layout
from rkpipe.measure.figures import HEADLINE, MAX_METRICS_COLUMNS, publish, read_details

ROOT = Path(__file__).resolve().parents[2]
PROVENANCE = {"cpu": "Test CPU", "host_id": "abc", "measured_at": "2026-12-07T00:00:00Z"}


class RecordingRun:
    """Records what a stage logs, in order (the real VariantRun needs an MLflow store)."""

    def __init__(self) -> None:
        self.metric_batches: list[dict[str, float]] = []
        self.artifacts: list[tuple[Path, str]] = []

    def log_metrics(self, metrics):
        self.metric_batches.append(dict(metrics))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path), artifact_path))


def _flat_keys(data, prefix=""):
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flat_keys(value, name)
        else:
            yield name


def test_publish_splits_headline_from_details_and_logs_the_headline_first(tmp_path):
    paths = SimpleNamespace(data_dir="data", models_dir="models", reports_dir="reports",
                            metrics_dir="metrics")  # fmt: skip
    layout = Layout.from_paths(paths, tmp_path)
    figures = {
        "ttft_ms": 80.0, "ttft_ms_stddev": 2.0, "ttft_ms_p50": 79.0, "ttft_ms_n": 5,
        "decode_tok_per_s": 40.0, "asr_rtf": 0.1, "asr_encoder_ms": 12.0,
    }  # fmt: skip
    run = RecordingRun()
    publish(layout, run, "bench", figures, PROVENANCE)

    declared = json.loads((tmp_path / "metrics/bench.json").read_text())
    assert declared == {
        "ttft_ms": 80.0, "decode_tok_per_s": 40.0, "asr_rtf": 0.1, "provenance": PROVENANCE,
    }  # fmt: skip
    details = read_details(tmp_path / "metrics")
    assert details["bench"] == figures | {"provenance": PROVENANCE}
    # headline first (MLflow's default columns); percentiles and sample counts never
    assert list(run.metric_batches[0]) == ["ttft_ms", "decode_tok_per_s", "asr_rtf"]
    assert run.metric_batches[1] == {"ttft_ms_stddev": 2.0, "asr_encoder_ms": 12.0}
    assert run.artifacts == [(tmp_path / "metrics/details/bench.json", "metrics")]


def test_booleans_and_op_counts_are_not_mlflow_metrics():
    from rkpipe.measure.figures import tracked

    got = tracked({"asr_random_weights": 1.0, "asr_ops.encoder.MatMul": 12, "ppl": 20.0,
                   "node_count": 900, "asr_clips.clean": 4.0, "eval_windows": 8.0,
                   "provenance": {}})  # fmt: skip
    assert got == {"ppl": 20.0}


def test_the_committed_metrics_files_fit_dvc_metrics_show():
    """``dvc metrics show`` prints one column per distinct key of the declared files."""
    columns = set()
    for path in sorted((ROOT / "metrics").glob("*.json")):
        columns |= set(_flat_keys(json.loads(path.read_text(encoding="utf-8"))))
    assert "ppl" in columns and "ttft_ms" in columns and "gate" in columns
    assert len(columns) <= MAX_METRICS_COLUMNS, sorted(columns)


def test_the_compared_figures_are_headline_figures():
    from rkpipe.measure.figures import COMPARED

    headline = {name for names in HEADLINE.values() for name in names}
    assert set(COMPARED) <= headline, set(COMPARED) - headline


def test_every_headline_name_can_fit_with_the_provenance():
    names = {name for names in HEADLINE.values() for name in names}
    assert len(names) + len(PROVENANCE) + 3 <= MAX_METRICS_COLUMNS  # board, board_id, isa too
