"""``rkpipe compare``: the seed's columns plus accuracy with deltas, markdown and CSV,
acceptance gates as config, and the Pareto front/plot."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from rkpipe.config.schema import GateRule
from rkpipe.report.compare import (
    compare_runs,
    evaluate_gates,
    gate_tags,
    gate_verdict,
    quant_label,
)
from rkpipe.report.pareto import pareto_front, plot_key, plot_pareto


@dataclass
class Run:
    run_id: str
    name: str
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def ort_params(per_channel: bool) -> dict[str, str]:
    return {
        "model.name": "smollm2-135m-instruct", "platform.name": "host",
        "quant.backend": "onnxruntime", "quant.dtype": "int8", "quant.ort.weight_type": "QInt8",
        "quant.ort.per_channel": str(per_channel),
    }  # fmt: skip


BASE = Run("a" * 32, "smollm2|onnxruntime-int8|host|aaaaaa", {
    "ttft_ms": 100.0, "decode_tok_per_s": 20.0, "peak_rss_mb": 512.0, "ppl": 30.0,
    "ppl_delta_pct": 4.0, "asr_wer_delta": 0.0, "kld_mean": 0.1,
}, ort_params(False))  # fmt: skip
CAND = Run("b" * 32, "cand", {
    "ttft_ms": 80.0, "decode_tok_per_s": 25.0, "peak_rss_mb": 1024.0, "ppl": 33.0,
    "ppl_delta_pct": 14.0, "asr_wer_delta": 2.0, "kld_mean": 0.3,
}, ort_params(True))  # fmt: skip
RULES = {
    "ppl": GateRule(metric="ppl_delta_pct", max=5.0),
    "wer": GateRule(metric="asr_wer_delta", max=1.0),
    "top1": GateRule(metric="top1_agreement", min=0.5),
}


def test_markdown_has_seed_columns_accuracy_and_deltas():
    md = compare_runs([BASE, CAND], rules=RULES).to_markdown()
    header, _, base_row, cand_row = md.splitlines()
    for column in ("model", "platform", "quant type", "TTFT (ms)", "tokens/s", "memory (GB)",
                   "PPL", "ΔPPL vs float (%)", "KLD", "gates"):  # fmt: skip
        assert column in header
    assert "| WER |" not in header  # no run has it: the column is left out
    assert "ort int8 dynamic (QInt8, per-tensor)" in base_row and "| 100.0 |" in base_row
    assert "80.0 (-20.0 %)" in cand_row and "25.0 (+25.0 %)" in cand_row
    assert "1.000 (+100.0 %)" in cand_row  # memory doubled
    assert "14.0 (+10.0)" in cand_row  # ΔPPL is an absolute delta, in points
    assert "**FAILED**: ppl_delta_pct=14 > max 5; asr_wer_delta=2 > max 1" in cand_row
    assert base_row.endswith("| passed |")
    assert base_row.startswith("| smollm2\\|onnxruntime-int8\\|host\\|aaaaaa | smollm2-135m")
    assert all(line.replace("\\|", "").count("|") == header.count("|") for line in md.splitlines())


def test_baseline_can_be_any_run_and_is_listed_first():
    rows = compare_runs([BASE, CAND], baseline=1).rows
    assert [r.run_id for r in rows] == [CAND.run_id, BASE.run_id] and rows[0].baseline


def test_csv_has_value_and_delta_columns():
    text = compare_runs([BASE, CAND], rules=RULES).to_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["baseline"] == "true" and rows[0]["decode_tok_per_s_delta_pct"] == ""
    assert float(rows[1]["decode_tok_per_s_delta_pct"]) == 25.0
    assert float(rows[1]["ppl_delta_pct_delta_abs"]) == 10.0
    assert rows[1]["gate"] == "failed" and rows[1]["gate_failed"] == "ppl,wer"


def test_gates_pass_fail_and_absent_metrics():
    results = evaluate_gates(BASE.metrics, RULES)
    assert [r.passed for r in results] == [True, True, None]
    assert gate_verdict(results) == "passed"
    tags = gate_tags(evaluate_gates(CAND.metrics, RULES))
    assert tags["gate"] == "failed" and tags["gate.failed"] == "ppl,wer"
    assert tags["gate.ppl"] == "ppl_delta_pct=14 > max 5"
    assert tags["gate.top1"] == "top1_agreement absent"
    low = evaluate_gates(
        {"top1_agreement": 0.4}, {"top1": {"metric": "top1_agreement", "min": 0.5}}
    )
    assert low[0].explain() == "top1_agreement=0.4 < min 0.5"
    assert gate_verdict(evaluate_gates({}, RULES)) == "n/a"


def test_quant_labels():
    assert quant_label(ort_params(True)) == "ort int8 dynamic (QInt8, per-channel)"
    assert quant_label({"quant.backend": "rkllm", "quant.dtype": "w8a8"}) == "w8a8"
    int4 = {"quant.backend": "onnxruntime", "quant.dtype": "int4", "quant.ort.block_size": "32",
            "quant.ort.scheme": "matmul_nbits", "quant.ort.accuracy_level": "4"}  # fmt: skip
    assert quant_label(int4) == "ort int4 MatMulNBits (block 32, acc 4)"
    gguf = int4 | {"quant.ort.scheme": "genai_gguf_exact", "quant.ort.accuracy_level": "0",
                   "quant.ort.embedding_bits": "8"}  # fmt: skip
    assert quant_label(gguf) == (
        "ort int4 genai builder + GGUF blocks (block 32, acc 0, 8-bit embedding)"
    )
    static = {"quant.backend": "onnxruntime", "quant.dtype": "int8", "quant.ort.scheme":
              "static_qdq", "quant.ort.weight_type": "QInt8", "quant.ort.per_channel": "False"}  # fmt: skip
    assert quant_label(static) == "ort int8 static QDQ (QInt8, per-tensor)"


def test_report_and_compare_label_a_config_alike(default_cfg):
    import dataclasses

    from rkpipe.config.loader import config_dict, flatten
    from rkpipe.report import quant_label as report_label

    ort = dataclasses.replace(
        default_cfg.quant.ort,
        scheme="matmul_nbits",
        block_size=64,
        accuracy_level=0,
        embedding_bits=0,
    )
    cfg = dataclasses.replace(
        default_cfg, quant=dataclasses.replace(default_cfg.quant, dtype="int4", ort=ort)
    )
    params = {k: str(v) for k, v in flatten(config_dict(cfg)).items()}  # as MLflow stores them
    assert report_label(cfg) == quant_label(params) == "ort int4 MatMulNBits (block 64, acc 0)"


def test_pareto_front_three_objectives():
    # (ppl: min, tok/s: max, memory: min)
    points = [(30, 20, 0.5), (33, 25, 1.0), (35, 19, 0.6), (30, 20, 0.5)]
    assert pareto_front(points, [True, False, True]) == [True, True, False, True]


def test_plot_pareto_writes_a_png(tmp_path):
    third = Run("c" * 32, "c", dict(BASE.metrics, ppl=40.0, decode_tok_per_s=15.0), BASE.params)
    path = plot_pareto(compare_runs([BASE, CAND, third]), tmp_path / "pareto.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    assert plot_pareto(compare_runs([Run("d" * 32, "d", {})]), tmp_path / "none.png") is None


def test_plot_key_numbers_the_points_and_marks_the_front():
    key = plot_key(["ort int8 @ host", "w8a8 @ rk3588"], [False, True])
    assert key.splitlines() == ["1  ort int8 @ host", "2  w8a8 @ rk3588   (on the front)"]


def measured(machine: str, board_id: str = "") -> dict[str, str]:
    return {"measured.deploy_bench.host_id": machine, "measured.deploy_bench.board_id": board_id,
            "measured.deploy_bench.cpu": "AMD EPYC" if machine == "h2" else "Intel Xeon",
            "measured.deploy_bench.board": "local"}  # fmt: skip


def test_speed_from_another_host_is_not_a_delta_but_accuracy_is():
    base = Run(BASE.run_id, "base", BASE.metrics, BASE.params, measured("h1"))
    same = Run(CAND.run_id, "same", CAND.metrics, CAND.params, measured("h1"))
    other = Run("c" * 32, "other", CAND.metrics, CAND.params, measured("h2"))
    comparison = compare_runs([base, same, other], rules=RULES)
    md = comparison.to_markdown()
    same_row = next(line for line in md.splitlines() if line.startswith("| same"))
    other_row = next(line for line in md.splitlines() if line.startswith("| other"))
    assert "80.0 (-20.0 %)" in same_row and "Intel Xeon [host h1]" in same_row
    assert "80.0 (other host: not comparable)" in other_row and "-20.0 %" not in other_row
    assert "25.0 (other host: not comparable)" in other_row
    assert "14.0 (+10.0)" in other_row  # the accuracy delta stays
    assert "AMD EPYC [host h2]" in other_row
    rows = list(csv.DictReader(io.StringIO(comparison.to_csv())))
    assert [r["speed_comparable"] for r in rows] == ["true", "true", "false"]
    assert rows[2]["ttft_ms_delta_pct"] == "" and rows[2]["ppl_delta_pct_delta_abs"] == "10.0"
    # a remote board is the measuring machine, whatever host drove it
    board_a = Run("d" * 32, "a", CAND.metrics, CAND.params, measured("h1", "board1"))
    board_b = Run("e" * 32, "b", CAND.metrics, CAND.params, measured("h2", "board1"))
    assert compare_runs([board_a, board_b]).rows[1].speed_comparable
    legacy = Run("f" * 32, "old", CAND.metrics, CAND.params)  # made before provenance
    assert compare_runs([base, legacy]).rows[1].speed_comparable


def test_a_kept_broken_variant_is_never_passed():
    """eval.keep_broken keeps a NaN variant's figures; its NaN PPL delta is skipped by the PPL
    gate, so without the built-in broken gate the ASR gate alone would call it passed."""
    broken = Run("g" * 32, "nan", {"ppl_delta_pct": float("nan"), "asr_wer_delta": 0.0,
                                   "llm_broken": 1.0}, ort_params(True))  # fmt: skip
    comparison = compare_runs([BASE, broken], rules=RULES)
    row = comparison.rows[1]
    assert gate_verdict(row.gates) == "broken" and row in comparison.gate_failures
    assert gate_tags(row.gates)["gate"] == "broken"
    assert "**BROKEN**: llm_broken=1 > max 0" in comparison.to_markdown()
