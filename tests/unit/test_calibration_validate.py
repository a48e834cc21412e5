"""Malformed calibration files give one-line CalibrationErrors that start with the path."""

from __future__ import annotations

import json
import logging

import pytest

from rkpipe.calibration.validate import estimate_tokens, validate_calibration_file
from rkpipe.errors import CalibrationError

GOOD = [
    {"input": "你好!", "target": "你好！有什么可以帮你？"},
    {"input": "What is 2+2?", "target": "4"},
]


def _write(tmp_path, content, name="calib.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


MALFORMED = [
    (
        "non_utf8",
        b'[{"input": "\xff", "target": "b"}]',
        "not valid UTF-8 at byte offset 12 (byte 0xff); save it as UTF-8",
    ),
    (
        "gbk",
        json.dumps([{"input": "你好", "target": "好"}], ensure_ascii=False).encode("gbk"),
        "it looks GBK/GB18030-encoded, convert with: iconv -f GB18030 -t UTF-8",
    ),
    (
        "invalid_json",
        '[{"input": "a", "target": "b"},\n {"input": "c" "target": "d"}]',
        "invalid JSON at line 2 column 16: Expecting ',' delimiter",
    ),
    ("trailing_comma", '[{"input": "a", "target": "b"},]', "invalid JSON at line 1 column 32"),
    ("empty_file", "", "invalid JSON at line 1 column 1: Expecting value"),
    (
        "object_top",
        {"input": "a", "target": "b"},
        'expected a JSON list of records like [{"input": "...", "target": "..."}], got a JSON object',
    ),
    ("string_top", '"hello"', "got a JSON string"),
    ("empty_list", [], "the list is empty"),
    (
        "record_not_object",
        [GOOD[0], ["input", "target"]],
        'record 1: expected an object with string "input" and "target", got a JSON array',
    ),
    ("record_is_string", ["just a prompt"], "record 0: expected an object"),
    (
        "missing_input",
        [GOOD[0], GOOD[1], {"prompt": "x", "target": "y"}],
        "record 2: missing key \"input\" (keys present: 'prompt', 'target')",
    ),
    (
        "missing_target",
        [{"input": "x"}],
        "record 0: missing key \"target\" (keys present: 'input')",
    ),
    (
        "non_string_input",
        [GOOD[0], {"input": 42, "target": "y"}],
        'record 1: "input" must be a string, got a JSON number',
    ),
    (
        "non_string_target",
        [{"input": "x", "target": ["y"]}],
        'record 0: "target" must be a string, got a JSON array',
    ),
    (
        "null_target",
        [GOOD[1], {"input": "x", "target": None}],
        'record 1: "target" must be a string, got a JSON null',
    ),
    (
        "bool_input",
        [{"input": True, "target": "y"}],
        'record 0: "input" must be a string, got a JSON boolean',
    ),
]


@pytest.mark.parametrize(
    ("content", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_file_gives_one_line_error(tmp_path, content, expected):
    path = _write(tmp_path, content)
    with pytest.raises(CalibrationError) as info:
        validate_calibration_file(path, max_context=4096)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    # no chained exception: the CLI shows one line, not a traceback of the JSON parser
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_first_bad_record_is_reported(tmp_path):
    records = [GOOD[0], {"input": "x", "target": 1}, {"input": 2, "target": "y"}]
    path = _write(tmp_path, records)
    with pytest.raises(CalibrationError, match=r"record 1: \"target\" must be a string"):
        validate_calibration_file(path, max_context=None)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(CalibrationError, match=r"nope\.json: file not found$"):
        validate_calibration_file(path, max_context=None)


def test_valid_file_passes_without_warnings(tmp_path, caplog):
    path = _write(tmp_path, GOOD)
    with caplog.at_level(logging.WARNING):
        assert validate_calibration_file(path, max_context=4096) == GOOD
    assert not caplog.records


def test_bom_is_accepted_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path, b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    with caplog.at_level(logging.WARNING):
        assert validate_calibration_file(path, max_context=None) == GOOD
    assert "byte order mark" in caplog.text


def test_extra_keys_warn(tmp_path, caplog):
    path = _write(tmp_path, [{**GOOD[0], "source": "web"}, GOOD[1]])
    with caplog.at_level(logging.WARNING):
        validate_calibration_file(path, max_context=None)
    assert "1 record(s) have extra keys ['source']" in caplog.text


def test_too_long_record_warns_with_estimate(tmp_path, caplog):
    long = {"input": "word " * 200, "target": "ok"}  # 1002 characters -> ~251 tokens
    path = _write(tmp_path, [GOOD[0], long])
    with caplog.at_level(logging.WARNING):
        records = validate_calibration_file(path, max_context=128)
    assert len(records) == 2
    assert "1 record(s) longer than max_context=128 tokens (estimated" in caplog.text
    assert "record 1: 251" in caplog.text


class _CharTokenizer:
    """One token per character."""

    def encode(self, text, add_special_tokens=False):
        return list(text)


def test_too_long_record_warns_with_tokenizer(tmp_path, caplog):
    path = _write(tmp_path, [{"input": "abcdef", "target": "ghij"}, {"input": "a", "target": "b"}])
    with caplog.at_level(logging.WARNING):
        validate_calibration_file(path, max_context=8, tokenizer=_CharTokenizer())
    assert "1 record(s) longer than max_context=8 tokens (record 0: 10)" in caplog.text


def test_estimate_counts_cjk_characters_as_tokens():
    assert estimate_tokens("今天天气怎么样") == 7
    assert estimate_tokens("abcdefgh") == 2
