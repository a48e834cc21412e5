"""Validation of a calibration file in rkllm-toolkit's format.

The format is a UTF-8 JSON list of ``{"input": str, "target": str}`` objects. Every problem is a
:class:`~rkpipe.errors.CalibrationError` whose one-line message starts with the file path and
names the first bad record, so a user can fix the file without reading a traceback.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rkpipe.errors import CalibrationError

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("input", "target")
_EXAMPLE = '[{"input": "...", "target": "..."}]'


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type (object, array, string, number, boolean, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def validate_calibration_file(
    path: Path, max_context: int | None, tokenizer: Any = None
) -> list[dict]:
    """Read and check a calibration file; return its records.

    Raises CalibrationError (message ``"<path>: <what is wrong>"``) for a missing file, bytes that
    are not UTF-8 (with the byte offset), invalid JSON (line/column), a top level that is not a
    list, an empty list, or the first record that is not an object, lacks a string ``input`` /
    ``target``, or has an empty (or whitespace-only) ``target``. Logs a warning for extra keys
    and for records longer than ``max_context`` tokens (counted with ``tokenizer`` if given,
    else estimated as characters / 4, one token per CJK character).
    """
    path = Path(path)
    records = _parse(path, _decode(path))
    check_records(records, path)
    _warn_extra_keys(records, path)
    if max_context:
        warn_long_records(records, path, max_context, tokenizer)
    return records


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CalibrationError(f"{path}: file not found") from None
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise CalibrationError(
            f"{path}: not valid UTF-8 at byte offset {exc.start} (byte "
            f"0x{byte:02x}){_gbk_hint(raw)}; save it as UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        log.warning("%s: starts with a UTF-8 byte order mark; ignoring it", path)
        text = text[1:]
    return text


def _gbk_hint(raw: bytes) -> str:
    try:
        raw.decode("gb18030")
    except UnicodeDecodeError:
        return ""
    return " - it looks GBK/GB18030-encoded, convert with: iconv -f GB18030 -t UTF-8"


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def check_records(records: Any, path: Path | str) -> None:
    """Raise CalibrationError unless ``records`` is a non-empty list of valid records."""
    if not isinstance(records, list):
        raise CalibrationError(
            f"{path}: expected a JSON list of records like {_EXAMPLE}, got "
            f"a JSON {json_type(records)}"
        )
    if not records:
        raise CalibrationError(
            f"{path}: the list is empty; expected at least one record like {_EXAMPLE}"
        )
    for index, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            raise CalibrationError(f"{path}: record {index}: {problem}")


def record_problem(record: Any) -> str | None:
    """Describe what is wrong with one record, or return None if it is valid."""
    if not isinstance(record, dict):
        return (
            f'expected an object with string "input" and "target", got a JSON {json_type(record)}'
        )
    for key in REQUIRED_KEYS:
        if key not in record:
            keys = ", ".join(repr(k) for k in list(record)[:6]) or "none"
            return f'missing key "{key}" (keys present: {keys})'
        if not isinstance(record[key], str):
            return f'"{key}" must be a string, got a JSON {json_type(record[key])}'
    if not record["target"].strip():
        # the toolkit calibrates on input+target: an empty target silently shortens the sample
        return '"target" is empty; expected the text the model should answer to "input"'
    return None


def _warn_extra_keys(records: list[dict], path: Path) -> None:
    extra = sorted({k for r in records for k in r if k not in REQUIRED_KEYS})
    if extra:
        count = sum(1 for r in records if set(r) - set(REQUIRED_KEYS))
        log.warning(
            '%s: %d record(s) have extra keys %s; rkllm-toolkit reads only "input" and "target"',
            path,
            count,
            extra,
        )


def warn_long_records(
    records: list[dict], path: Path | str, max_context: int, tokenizer: Any = None
) -> list[int]:
    """Log a warning for records whose input+target exceed ``max_context``; return their indices."""
    lengths = [record_tokens(r, tokenizer) for r in records]
    long = [i for i, n in enumerate(lengths) if n > max_context]
    if long:
        unit = "tokens" if tokenizer is not None else "tokens (estimated, no tokenizer)"
        first = ", ".join(f"record {i}: {lengths[i]}" for i in long[:5])
        log.warning(
            "%s: %d record(s) longer than max_context=%d %s (%s); the toolkit will "
            "truncate or reject them",
            path,
            len(long),
            max_context,
            unit,
            first,
        )
    return long


def record_tokens(record: dict, tokenizer: Any = None) -> int:
    """Token count of a record's input + target (tokenizer) or a characters/4 estimate."""
    if tokenizer is None:
        return estimate_tokens(record["input"] + record["target"])
    return sum(len(tokenizer.encode(record[k], add_special_tokens=False)) for k in REQUIRED_KEYS)


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: characters/4, but one token per CJK character."""
    cjk = sum(1 for ch in text if ord(ch) >= 0x2E80)
    return cjk + (len(text) - cjk + 3) // 4
