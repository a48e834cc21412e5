"""The ASR quantizers (``asr.quant.scheme``): one entry each in :data:`QUANTIZERS`.

``dynamic`` (MatMulInteger), ``static_qdq`` (QDQ calibrated on synthesized clips),
``matmul_nbits4`` and ``matmul_nbits8`` (4- and 8-bit block-wise weights, MatMulNBits).
:mod:`rkpipe.asr.quantize` dispatches on the table
and config validation reads its names; this module imports nothing heavy at the top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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


def quantize_nbits_model(
    model: Any, dst: Path, q: AsrQuantConfig, large: bool, feeds: Any, bits: int = 4
) -> None:
    """MatMulNBits with ``bits``-bit block-wise weights; the quantized model is saved to ``dst``.

    With ``q.accuracy_level`` 4 onnxruntime also quantizes the activations to int8, per block of
    ``q.block_size`` along K (not per tensor as ``dynamic`` does): an activation outlier costs
    only its own block's precision, which is why 8 bits keep noisy-speech WER where
    ``dynamic`` loses it (docs/benchmarks.md).
    """
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise AsrError(
            f"matmul_nbits{bits}: cannot import MatMulNBitsQuantizer ({exc}); "
            "install onnx-ir: pip install onnx-ir==1.1.0"
        ) from exc
    noisy = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = noisy.level
    noisy.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = _nbits_quantizer(MatMulNBitsQuantizer, model, q, bits)
        quantizer.process()
    finally:
        noisy.setLevel(level)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


def _nbits_quantizer(cls: Any, model: Any, q: AsrQuantConfig, bits: int) -> Any:
    return cls(
        model,
        bits=bits,
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


def config_problems(q: AsrQuantConfig) -> list[str]:
    """The cross-field problems of ``asr.quant`` (config validation and the quantizer ask)."""
    if "Gather" in q.op_types and "matmul_nbits8" in (q.scheme, q.encoder_scheme):
        return [
            "asr.quant.op_types: matmul_nbits8 cannot quantize Gather (onnxruntime's block-"
            "quantized Gather is 4-bit only); use [MatMul]: the embedding then reads the "
            "8-bit LM-head weight (tie_embedding)"
        ]
    return []


# asr.quant.scheme -> its quantizer; config validation reads the names here.
QUANTIZERS = {
    "dynamic": AsrQuantizer(quantize_dynamic_file),
    "static_qdq": AsrQuantizer(quantize_static_file),
    "matmul_nbits4": AsrQuantizer(partial(quantize_nbits_model, bits=4), in_memory=True),
    "matmul_nbits8": AsrQuantizer(partial(quantize_nbits_model, bits=8), in_memory=True),
}
SCHEMES = tuple(QUANTIZERS)
