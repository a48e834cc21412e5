"""What every quantization backend takes and returns, and a peak-memory probe they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from rkpipe.config.schema import QuantConfig


@dataclass
class QuantizeRequest:
    """One quantization job.

    ``float_model_dir`` is the Hugging Face float checkpoint; ``onnx_fp32_dir`` the
    fp32 ONNX export of it (backends that start from ONNX need it, others ignore it);
    ``calibration_json`` the calibration set; ``platform`` the target SoC name
    (``host`` for the machine running the pipeline); ``out_dir`` the directory the
    backend creates (atomically).
    """

    float_model_dir: Path
    onnx_fp32_dir: Path | None
    calibration_json: Path
    quant: QuantConfig
    platform: str
    out_dir: Path


@dataclass
class QuantizeResult:
    """What a backend produced.

    ``artifact`` is the main model file inside ``out_dir``; ``metrics`` are numbers with
    unit-suffixed names (``size_mb``, ``quantize_s``, ``peak_rss_mb``,
    ``quantized_matmul_count`` ...); ``params`` the settings worth tracking, as strings.
    """

    artifact: Path
    out_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A quantization backend: registered under ``name`` in :mod:`rkpipe.backends`."""

    name: str

    def quantize(self, request: QuantizeRequest) -> QuantizeResult:
        """Quantize ``request`` into ``request.out_dir``; raise BackendError on failure."""
        ...
