"""Atomic writes, benchmark statistics and the report table."""

from __future__ import annotations

import pytest

from rkpipe.bench.stats import percentile, summarize, summarize_samples
from rkpipe.io import atomic_path, read_json, write_json_atomic
from rkpipe.report import render_report


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_a_directory_whole(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_json_is_stable(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": "中文"})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "a": "中文",\n  "b": 1\n}\n'
    assert read_json(tmp_path / "a.json") == {"a": "中文", "b": 1}


def test_percentiles_and_summary():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    stats = summarize(values)
    assert stats["mean"] == 3.0 and stats["stddev"] == pytest.approx(1.5811388)
    assert summarize([7.0])["stddev"] == 0.0


def test_summarize_samples_excludes_warmups():
    rows = [{"warmup": True, "ttft_ms": 1000.0}] + [
        {"warmup": False, "ttft_ms": v} for v in (10.0, 20.0)
    ]
    out = summarize_samples(rows, ["ttft_ms", "absent"], prefix="x_")
    assert out["x_ttft_ms"] == 15.0 and out["x_ttft_ms_p50"] == 15.0 and out["x_ttft_ms_n"] == 2.0
    assert "x_absent" not in out


def test_report_has_seed_columns_and_caveats(default_cfg):
    metrics = {
        "ttft_ms": 91.234,
        "decode_tok_per_s": 73.0,
        "peak_rss_mb": 1024.0,
        "ppl": 24.0,
        "ppl_float": 23.15,
        "ppl_delta_pct": 3.67,
        "asr_wer": 1.0,
    }
    text = render_report(default_cfg, metrics, "abc")
    assert "| model | platform | quant type | board | TTFT (ms) | tokens/s | memory (GB) |" in text
    assert (
        "| smollm2-135m-instruct | host | ort int8 dynamic (QInt8, per-tensor) | local | 91.2 | 73.0 | 1.000 |"
        in text
    )
    assert "+3.7 %" in text
    assert "random weights" in text and "de-quantized" in text
