"""Artifacts hold no timings and no host facts: two acquisitions into different paths, at
different times, give byte-identical outputs (so DVC never reruns a downstream stage for
nothing, and a second machine rebuilds the same bytes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rkpipe.asr.model import acquire_asr
from rkpipe.config.schema import AsrConfig
from rkpipe.io import sha256_file
from rkpipe.reproduce import is_timing

pytestmark = pytest.mark.integration


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def timing_keys(data) -> list[str]:
    if isinstance(data, dict):
        return [k for k in data if is_timing(k)] + [
            t for v in data.values() for t in timing_keys(v)
        ]
    if isinstance(data, list):
        return [t for v in data for t in timing_keys(v)]
    return []


def test_two_asr_acquisitions_are_byte_identical(tmp_path):
    first = tmp_path / "a" / "asr" / "float"
    second = tmp_path / "elsewhere" / "deeper" / "float"
    acquire_asr(AsrConfig(), first)
    time.sleep(1.1)  # a timestamp or a duration would now differ
    acquire_asr(AsrConfig(), second)
    assert tree(first) == tree(second)
    manifest = json.loads((first / "manifest.json").read_text())
    assert timing_keys(manifest) == [] and str(tmp_path) not in json.dumps(manifest)


def test_quant_manifest_keeps_facts_but_not_their_timings():
    from rkpipe.backends.onnxruntime import _manifest
    from rkpipe.config.schema import QuantConfig

    params = {"backend": "onnxruntime", "scheme": "genai_int4", "folded_weight_transposes": "0",
              "block_size": "32"}  # fmt: skip
    manifest = _manifest(QuantConfig(), params, {"node_count": 342}, {"builder_s": 41.2, "x": 1})
    assert manifest["facts"] == {"x": 1} and timing_keys(manifest) == []
