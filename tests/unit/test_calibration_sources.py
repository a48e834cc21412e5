"""Calibration inputs from a prompts file, local dataset files and a ready JSON file."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from rkpipe.calibration.builder import select_inputs
from rkpipe.calibration.sources import load_inputs, read_prompts
from rkpipe.config.schema import CalibConfig
from rkpipe.errors import CalibrationError

REPO = Path(__file__).resolve().parents[2]
CJK = re.compile(r"[\u4e00-\u9fff]")


def test_prompts_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\nHello!\n  你好!  \n# another\nWhat is 2+2?\n", encoding="utf-8")
    inputs = load_inputs(CalibConfig(prompts_file=str(path)))
    assert inputs == [
        {"input": "Hello!", "target": None},
        {"input": "你好!", "target": None},
        {"input": "What is 2+2?", "target": None},
    ]


def test_project_prompts_are_enough_and_bilingual():
    prompts = read_prompts(REPO / "data/calib/prompts.txt")
    chinese = [p for p in prompts if CJK.match(p)]
    assert len(prompts) >= 64 and len(set(prompts)) == len(prompts)
    assert 0.4 <= len(chinese) / len(prompts) <= 0.6
    assert "你好!" in prompts and "今天天气怎么样?" in prompts


def test_missing_prompts_file(tmp_path):
    with pytest.raises(CalibrationError, match=r"prompts file not found \(calib.prompts_file\)"):
        load_inputs(CalibConfig(prompts_file=str(tmp_path / "none.txt")))


def _dataset_cfg(path, **kw) -> CalibConfig:
    return CalibConfig(source="dataset", dataset=str(path), **kw)


def test_jsonl_dataset_with_target_column(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"q": "hi", "a": "hello"}, {"q": "", "a": "x"}, {"q": "2+2?", "a": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    inputs = load_inputs(_dataset_cfg(path, input_column="q", target_column="a"))
    assert inputs == [{"input": "hi", "target": "hello"}, {"input": "2+2?", "target": None}]


def test_csv_and_text_datasets(tmp_path):
    (tmp_path / "d.csv").write_text("text,other\nfirst prompt,1\nsecond prompt,2\n")
    assert [i["input"] for i in load_inputs(_dataset_cfg(tmp_path / "d.csv"))] == [
        "first prompt",
        "second prompt",
    ]
    (tmp_path / "d.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    assert [i["input"] for i in load_inputs(_dataset_cfg(tmp_path / "d.txt"))] == [
        "line one",
        "line two",
    ]


def test_chat_messages_column_gives_first_user_turn(tmp_path):
    path = tmp_path / "chat.jsonl"
    row = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
        ]
    }
    path.write_text(json.dumps(row, ensure_ascii=False), encoding="utf-8")
    assert load_inputs(_dataset_cfg(path, input_column="messages"))[0]["input"] == "你好"


def test_unknown_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "x"}), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"no column 'text' .* columns: \['prompt'\]"):
        load_inputs(_dataset_cfg(path))


def test_unloadable_dataset_is_a_calibration_error(tmp_path):
    with pytest.raises(CalibrationError, match="cannot load the dataset"):
        load_inputs(_dataset_cfg(tmp_path / "missing-dir-or-name"))


def test_json_source_is_validated(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"input": "a", "target": "b"}]), encoding="utf-8")
    cfg = CalibConfig(source="json", json_file=str(path))
    assert load_inputs(cfg) == [{"input": "a", "target": "b"}]
    path.write_text(json.dumps([{"input": "a"}]), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r'record 0: missing key "target"'):
        load_inputs(cfg)


def test_unknown_source():
    with pytest.raises(CalibrationError, match="unknown calib.source 'csv'"):
        load_inputs(dataclasses.replace(CalibConfig(), source="csv"))


def test_select_inputs_dedupes_and_caps():
    items = [{"input": t, "target": None} for t in ["a", "b", "a ", "", "c", "d"]]
    assert [i["input"] for i in select_inputs(items, 3)] == ["a", "b", "c"]
