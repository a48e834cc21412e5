"""Device accuracy in the report, the gates and the scoring of a board's answer."""

from __future__ import annotations

import numpy as np
import pytest

from rkpipe.errors import BoardError
from rkpipe.evaluate.device import MISSING, reference_side, score_rows
from rkpipe.evaluate.llm import build_reference
from rkpipe.report import render_report
from rkpipe.report.compare import evaluate_gates, gate_verdict

HOST = {"ppl_float": 20.0, "ppl": 21.0, "ppl_delta_pct": 5.0, "kld_mean": 0.02,
        "top1_agreement": 0.9}  # fmt: skip
DEVICE = {"device_ppl": 26.0, "device_ppl_delta_pct": 30.0, "device_kld_mean": 0.2,
          "device_top1_agreement": 0.7, MISSING: 0.0}  # fmt: skip


def accuracy_table(text: str) -> list[str]:
    section = text.split("## LLM accuracy", 1)[1].split("\n\n")[1]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_the_report_puts_host_and_device_figures_side_by_side(default_cfg):
    rows = accuracy_table(render_report(default_cfg, HOST | DEVICE, "v"))
    assert rows[0].startswith("| quant type | run on | PPL float | PPL | ΔPPL | KLD |")
    host, device = rows[2], rows[3]
    assert "| host | 20.00 | 21.00 | +5.00 % | 0.0200 | 0.900 |" in host
    assert "| device | 20.00 | 26.00 | +30.00 % | 0.2000 | 0.700 |" in device
    assert len(rows) == 4  # no LoRA adapter: no third row


def test_missing_device_figures_say_so_and_absent_ones_leave_no_row(default_cfg):
    missing = accuracy_table(render_report(default_cfg, HOST | {MISSING: 1.0}, "v"))
    assert "| device | 20.00 | missing | missing | missing | missing |" in missing[3]
    assert len(accuracy_table(render_report(default_cfg, HOST, "v"))) == 3  # eval.device off


def test_a_lora_variant_shows_the_figures_without_its_adapter(default_cfg):
    no_lora = {
        f"device_no_lora_{k}": v
        for k, v in {
            "ppl": 40.0,
            "ppl_delta_pct": 100.0,
            "kld_mean": 0.5,
            "top1_agreement": 0.5,
        }.items()
    }
    rows = accuracy_table(render_report(default_cfg, HOST | DEVICE | no_lora, "v"))
    assert "| device, no LoRA | 20.00 | 40.00 | +100.00 % | 0.5000 | 0.500 |" in rows[4]


def test_gates_judge_the_device_figure_when_there_is_one():
    rules = {"ppl": {"metric": "ppl_delta_pct", "max": 10.0}}
    on_host = evaluate_gates(HOST, rules)
    assert gate_verdict(on_host) == "passed" and on_host[0].metric == "ppl_delta_pct"
    on_device = evaluate_gates(HOST | DEVICE, rules)
    assert gate_verdict(on_device) == "failed"
    assert on_device[0].explain() == "device_ppl_delta_pct=30 > max 10"
    nan = evaluate_gates(HOST | {"device_ppl_delta_pct": float("nan")}, rules)
    assert nan[0].metric == "ppl_delta_pct"  # a NaN device figure does not hide the host one


def tiny_reference():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 50)).astype(np.float32)
    windows = [list(rng.integers(0, 50, 20)) for _ in range(2)]
    return build_reference(lambda w: table[np.asarray(w)], windows), table


def test_an_incomplete_answer_from_the_board_is_an_error():
    reference, _ = tiny_reference()
    side = reference_side(reference, 8)
    with pytest.raises(BoardError, match="answered 0 of 2 evaluation windows"):
        score_rows(reference, side, [])
    short = {"kind": "llm_eval", "window": 0, "target_logp": [0.0], "top1": [0],
             "topk_logp": [[0.0] * 8], "rest_logp": [0.0]}  # fmt: skip
    with pytest.raises(BoardError, match="window 0: 1 positions, expected 19"):
        score_rows(reference, side, [short, short | {"window": 1}])
    bare = {"kind": "llm_eval", "window": 0, "target_logp": [0.0] * 19}
    with pytest.raises(BoardError, match=r"window 0: the board's row lacks \['rest_logp', 'top1'"):
        score_rows(reference, side, [bare, bare | {"window": 1}])


def test_a_device_equal_to_the_reference_scores_perfectly():
    from rkpipe.engines.engine_shared import window_scores

    reference, table = tiny_reference()
    side = reference_side(reference, 8)
    rows = [window_scores(table[np.asarray(w)], w, k.tolist(), i)
            for i, (w, k) in enumerate(zip(reference.windows, side.ids, strict=True))]  # fmt: skip
    figures = score_rows(reference, side, rows)
    assert figures["device_top1_agreement"] == 1.0
    assert figures["device_ppl_delta_pct"] == pytest.approx(0.0, abs=1e-9)
    assert abs(figures["device_kld_mean"]) < 1e-3  # only the stored float16 rounding
