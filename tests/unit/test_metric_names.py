"""One name per figure: a metric name written to two metrics files is logged twice to the same
MLflow run, which keeps only the last value, and ``report`` merges the files by name. The board's
ASR real-time factor (``asr_rtf``, metrics/bench.json) and the host's (``asr_host_rtf``,
metrics/evaluate.json) were once both ``asr_rtf``; evaluate once repeated quantize_asr's sizes
and reference_logits' float perplexity under the same names."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "metrics"


def _host_asr_names() -> set[str]:
    """The names evaluate's ASR comparison writes, from the code (the committed
    metrics/evaluate.json may predate a rename until the stage runs again)."""
    from rkpipe.asr.evaluate import VARIANTS, _metrics

    row = {"total_ms": 10.0, "audio_s": 1.0, "encoder_ms": 1.0, "decoder_ms": 1.0, "ids": [1]}
    runs = {v: [dict(row), dict(row)] for v in VARIANTS}
    hyps = {v: ["a", "b"] for v in VARIANTS}
    # two test-set variants, so the per-variant names (asr_wer.<variant>, ...) are checked too
    groups = ["clean", "white_10db"]
    return set(_metrics(["a", "b"], hyps, runs, groups)) | {"asr_random_weights"}


def _board_names() -> set[str]:
    """The names deploy_bench writes for the board's LLM and ASR samples, from the code."""
    from rkpipe.board.deploy import ASR_KEYS, LLM_KEYS
    from rkpipe.measure.stats import summarize_samples

    rows = [
        {key: 1.0 for key in (*ASR_KEYS, *LLM_KEYS)},
        {key: 2.0 for key in (*ASR_KEYS, *LLM_KEYS)},
    ]
    return set(summarize_samples(rows, LLM_KEYS)) | set(summarize_samples(rows, ASR_KEYS, "asr_"))


def names_by_file() -> dict[str, set[str]]:
    """Every metrics file's figure names: the committed files, with the code's names for the
    parts a rename may have changed since they were written."""
    files = {
        path.stem: set(json.loads(path.read_text(encoding="utf-8"))) - {"provenance"}
        for path in sorted(METRICS.glob("*.json"))
    }
    # every figure of a stage is in its details file, when the main job ran in this checkout
    for path in sorted(METRICS.glob("details/*.json")):
        files[path.stem] |= set(json.loads(path.read_text(encoding="utf-8"))) - {"provenance"}
    host = _host_asr_names()
    files["evaluate"] = {n for n in files.get("evaluate", set()) if not n.startswith("asr_")} | host
    files["bench"] = files.get("bench", set()) | _board_names()
    return files


def test_no_metric_name_is_in_two_files():
    seen: dict[str, list[str]] = {}
    for stem, names in names_by_file().items():
        for name in names:
            seen.setdefault(name, []).append(stem)
    shared = {name: sorted(stems) for name, stems in seen.items() if len(stems) > 1}
    assert not shared, f"metric names in two metrics files: {shared}"


def test_host_and_board_rtf_have_their_own_names():
    host, board = _host_asr_names(), _board_names()
    assert {"asr_host_rtf", "asr_host_rtf_fp32", "asr_host_rtf_speedup"} <= host
    assert "asr_rtf" in board and not host & board
