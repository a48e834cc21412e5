"""Atomic writes, benchmark statistics and the report table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rkpipe.io import atomic_path, read_json, write_json_atomic
from rkpipe.measure.stats import percentile, summarize, summarize_samples
from rkpipe.report import ReportContext, render_report

REPO = Path(__file__).resolve().parents[2]


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


def test_report_has_seed_columns_and_caveats():
    from rkpipe.config import compose

    default_cfg = compose(REPO / "conf", ["asr=whisper_tiny_random"])  # the random-weight caveat
    metrics = {
        "ttft_ms": 91.234,
        "decode_tok_per_s": 73.0,
        "peak_rss_mb": 1024.0,
        "ppl": 24.0,
        "ppl_float": 23.15,
        "ppl_delta_pct": 3.67,
        "asr_wer": 1.0,
    }
    metrics |= {
        "decode_tok_per_s_stddev": 2.04,
        "prefill_tok_per_s": 1400.0,
        "model_params": 134.5e6,
    }
    prov = {"host_id": "e997ba2f59e3", "board": "local", "board_id": "", "cpu": "Xeon",
            "isa": "avx2 avx512_vnni", "measured_at": "2026-12-07T05:46:48+00:00"}  # fmt: skip
    ctx = ReportContext(provenance={"deploy_bench": prov, "evaluate": prov}, verdict="passed",
                        git_sha="abc123", run_id="r1", versions={"onnxruntime": "1.32.0"})  # fmt: skip
    text = render_report(default_cfg, metrics, "abc", ctx)
    header = ("| model | params | platform | quant type | backend | pp/tg | threads | TTFT (ms) | "
              "prefill tok/s | decode tok/s | memory (MB) | size (MB) | measured on | date |")  # fmt: skip
    assert header in text
    assert (
        "| smollm2-135m-instruct | 134 M | host | "
        "ort int8 MatMulNBits (block 32, acc 4, 8-bit embedding) | "
        "onnxruntime 1.32.0 | 128/64 | 2 | 91.2 | 1400.0 | 73.0 ± 2.0 | 1024 | – | "
        "Xeon [host e997ba2f59e3] | 2026-12-07 |"
    ) in text
    assert "| +3.67 % |" in text and "| passed | Xeon [host e997ba2f59e3] |" in text
    assert "git abc123; MLflow run r1" in text and "more than one host" not in text
    other = ctx.provenance | {"evaluate": prov | {"host_id": "0123456789ab"}}
    mixed = render_report(default_cfg, metrics, "abc", dataclasses.replace(ctx, provenance=other))
    assert "more than one host" in mixed and "0123456789ab" in mixed
    assert "random weights" in text and "de-quantized" in text


def _asr_section(text: str) -> str:
    return text.split("## ASR", 1)[1].split("## Provenance", 1)[0]


def test_report_shows_wer_per_clip_variant_only_when_there_are_several(default_cfg):
    one = {"asr_wer": 0.1, "asr_clips.clean": 3.0, "asr_wer.clean": 0.1}
    assert "clip variant" not in _asr_section(render_report(default_cfg, one, "abc"))
    several = one | {"asr_clips.white_10db": 3.0, "asr_wer.white_10db": 0.25,
                     "asr_wer_fp32.white_10db": 0.2, "asr_wer_delta.white_10db": 5.0}  # fmt: skip
    section = _asr_section(render_report(default_cfg, several, "abc"))
    assert "| clip variant | clips | WER | WER fp32 | ΔWER (pt) | CER | CER fp32 |" in section
    assert "| clean | 3 | 0.100 |" in section
    assert "| white_10db | 3 | 0.250 | 0.200 | 5.00 | – | – |" in section
    assert section.index("| clean |") < section.index("| white_10db |")


def test_report_calls_asr_figures_meaningless_only_for_random_weights(default_cfg):
    assert not default_cfg.asr.random_weights  # the default ASR is Whisper tiny.en, real weights
    real = render_report(default_cfg, {"asr_random_weights": 0.0}, "abc")
    assert "meaningless" not in real and "random weights" not in real
    assert "Whisper's English text normaliser" in real
    random = render_report(default_cfg, {"asr_random_weights": 1.0}, "abc")
    assert "meaningless" in _asr_section(random)
