"""A numerically broken variant is stopped by evaluate with one line, never reported as fine:
NaN logits, an exploded perplexity, and a collapsed top-1, scored the way evaluate scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rkpipe.evaluate.host import _sanity
from rkpipe.evaluate.llm import build_reference, score_reference
from rkpipe.evaluate.sanity import (
    BROKEN_METRIC,
    BrokenVariantError,
    broken_reasons,
    likely_cause,
)
from rkpipe.report.variant import judge

VOCAB = 64
XEON = {"cpu": {"arch": "x86_64", "isa": ["avx2", "avx512_vnni"]}}
EPYC = {"cpu": {"arch": "x86_64", "isa": ["avx2", "fma"]}}


def float_logits(window: list[int]) -> np.ndarray:
    rng = np.random.default_rng(len(window))
    logits = rng.normal(0, 1, (len(window), VOCAB)).astype(np.float32)
    logits[np.arange(len(window) - 1), window[1:]] += 6.0  # a model that predicts its text
    return logits


def scored(candidate) -> dict[str, float]:
    windows = [list(range(1, 33)), list(range(5, 37))]
    reference = build_reference(float_logits, windows)
    return score_reference(reference, candidate, label="candidate")


def test_a_sane_variant_passes():
    noisy = lambda w: float_logits(w) + np.random.default_rng(1).normal(0, 0.05, (len(w), VOCAB))  # noqa: E731
    metrics = scored(noisy)
    assert broken_reasons(metrics) == [] and metrics["top1_agreement"] > 0.9
    assert _sanity(metrics, __import__("pathlib").Path("/nonexistent"), XEON, False) == {
        BROKEN_METRIC: 0.0
    }


def test_nan_logits_stop_evaluate_with_one_line(tmp_path):
    metrics = scored(lambda w: np.full((len(w), VOCAB), np.nan, dtype=np.float32))
    assert broken_reasons(metrics) == ["NaN or inf in the logits (PPL or KLD is not finite)"]
    with pytest.raises(BrokenVariantError) as caught:
        _sanity(metrics, tmp_path, XEON, keep_broken=False)
    line = str(caught.value)
    assert "\n" not in line and "PPL nan vs float" in line and "eval.keep_broken=true" in line


def test_an_exploded_perplexity_names_the_likely_cause(tmp_path):
    # the argmax moved off the text everywhere: what a saturating int8 kernel does
    def exploded(window):
        logits = float_logits(window)
        logits[np.arange(len(window) - 1), window[1:]] -= 40.0
        return logits

    metrics = scored(exploded)
    reasons = broken_reasons(metrics)
    assert "PPL more than 10x the float model's" in reasons
    assert "top-1 agreement below 0.2" in reasons
    manifest = {"scheme": "dynamic", "weight_type": "QInt8", "per_channel": True,
                "reduce_range": False}  # fmt: skip
    (tmp_path / "quant_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BrokenVariantError, match="u8 x s8 MatMulInteger saturates on x86 without VNNI"
    ):
        _sanity(metrics, tmp_path, EPYC, keep_broken=False)
    # kept for study: flagged, and the report's verdict says broken whatever the gates say
    kept = _sanity(metrics, tmp_path, EPYC, keep_broken=True)
    assert kept == {BROKEN_METRIC: 1.0}
    verdict, notes, tags = judge(metrics | kept, {})
    assert verdict == "broken" and tags["gate"] == "broken" and "broken" in notes
    assert math.isfinite(metrics["ppl"]) and metrics["ppl"] > 10 * metrics["ppl_float"]


def test_likely_causes():
    u8s8 = {"scheme": "dynamic", "weight_type": "QInt8", "per_channel": True}
    assert "without VNNI" in likely_cause(u8s8, EPYC)
    assert "reduce_range=true" in likely_cause(u8s8, XEON)
    assert "too large" in likely_cause(u8s8 | {"reduce_range": True}, EPYC)
    assert "too large" in likely_cause({"scheme": "matmul_nbits"}, EPYC)
    assert broken_reasons({"asr_wer": 1.0}) == []  # no LLM evaluated (an rkllm variant)


class RecordingRun:
    run_id = "r1"

    def __init__(self):
        self.tags, self.metrics = {}, {}

    def set_tags(self, tags):
        self.tags |= tags

    def log_metrics(self, metrics):
        self.metrics |= metrics


def test_the_evaluate_stage_tags_the_run_broken_and_writes_no_metrics(
    default_cfg, tmp_path, monkeypatch
):
    import dataclasses
    import importlib.util

    from rkpipe.evaluate import host

    spec = importlib.util.spec_from_file_location("evaluate_stage", "stages/evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    cfg = dataclasses.replace(
        default_cfg, paths=dataclasses.replace(default_cfg.paths, metrics_dir=str(tmp_path))
    )

    def broken(cfg):
        raise BrokenVariantError("the quantized LLM is broken: PPL 9446261.00 vs float 28.86")

    monkeypatch.setattr(host, "evaluate_variant", broken)
    run = RecordingRun()
    with pytest.raises(BrokenVariantError):
        stage.body(cfg, run)
    assert run.tags["gate"] == "broken" and "9446261" in run.tags["gate.broken_reason"]
    assert run.metrics == {} and not (tmp_path / "evaluate.json").exists()
