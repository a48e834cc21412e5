"""The ASR quantizers (``asr.quant.scheme``): one entry each in :data:`QUANTIZERS`.

``dynamic`` (MatMulInteger), ``static_qdq`` (QDQ calibrated on synthesized clips) and
``matmul_nbits4`` (4-bit block-wise weights). :mod:`rkpipe.asr.quantize` dispatches on the table
and config validation reads its names; this module imports nothing heavy at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.errors import AsrError

if TYPE_CHECKING:
    from rkpipe.config.schema import AsrQuantConfig


def quantize_dynamic_file(src: Path, dst: Path, q: AsrQuantConfig, large: bool, feeds: Any) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model_input=str(src),
        model_output=str(dst),
        op_types_to_quantize=list(q.op_types),
        per_channel=q.per_channel,
        weight_type=getattr(QuantType, q.weight_type),
        use_external_data_format=large,
    )


def quantize_static_file(src: Path, dst: Path, q: AsrQuantConfig, large: bool, feeds: Any) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from rkpipe.calibration.feeds import FeedsReader

    if not feeds:
        raise AsrError(f"static_qdq needs calibration inputs for {dst.name}; none were made")
    quantize_static(
        model_input=str(src),
        model_output=str(dst),
        calibration_data_reader=FeedsReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(q.op_types),
        per_channel=q.per_channel,
        activation_type=getattr(QuantType, q.activation_type),
        weight_type=getattr(QuantType, q.weight_type),
        calibrate_method=getattr(CalibrationMethod, q.calibrate_method),
        use_external_data_format=large,
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_nbits4_model(
    model: Any, dst: Path, q: AsrQuantConfig, large: bool, feeds: Any
) -> None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise AsrError(
            f"matmul_nbits4: cannot import MatMulNBitsQuantizer ({exc}); "
            "install onnx-ir: pip install onnx-ir==1.1.0"
        ) from exc
    noisy = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = noisy.level
    noisy.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = _nbits_quantizer(MatMulNBitsQuantizer, model, q)
        quantizer.process()
    finally:
        noisy.setLevel(level)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


def _nbits_quantizer(cls: Any, model: Any, q: AsrQuantConfig) -> Any:
    return cls(
        model,
        bits=4,
        block_size=q.block_size,
        is_symmetric=q.symmetric,
        accuracy_level=q.accuracy_level or None,
        op_types_to_quantize=tuple(q.op_types),
    )


@dataclass(frozen=True)
class AsrQuantizer:
    """One ``asr.quant.scheme``: the quantizer call, and whether it takes the folded model in
    memory (MatMulNBits) instead of a staged file (the onnxruntime quantizers that re-read it)."""

    run: Callable[[Any, Path, AsrQuantConfig, bool, Any], None]
    in_memory: bool = False


# asr.quant.scheme -> its quantizer; config validation reads the names here.
QUANTIZERS = {
    "dynamic": AsrQuantizer(quantize_dynamic_file),
    "static_qdq": AsrQuantizer(quantize_static_file),
    "matmul_nbits4": AsrQuantizer(quantize_nbits4_model, in_memory=True),
}
SCHEMES = tuple(QUANTIZERS)
