"""Calibration data for quantization: sources, record builder and file validator.

``load_inputs`` (sources) -> ``build_records`` (chat template, truncation, float-model targets)
-> ``write_calibration`` (deterministic JSON) -> ``validate_calibration_file`` (before a toolkit
reads it). The format is rkllm-toolkit's: a JSON list of ``{"input": str, "target": str}``.
"""

from rkpipe.calibration.builder import (
    build_calibration_file,
    build_records,
    summarize,
    write_calibration,
)
from rkpipe.calibration.sources import load_inputs
from rkpipe.calibration.validate import validate_calibration_file

__all__ = [
    "build_calibration_file",
    "build_records",
    "load_inputs",
    "summarize",
    "validate_calibration_file",
    "write_calibration",
]
