"""``matmul_nbits_hqq`` int4: MatMulNBits weights fitted by HQQ (half-quadratic quantization:
per-block scale and zero point optimised against the weight error, no calibration data), via
onnxruntime's ``HQQWeightOnlyQuantConfig``. Asymmetric, ``block_size`` and ``accuracy_level``
as ``matmul_nbits``; needs torch in the main interpreter (onnxruntime's HQQ runs on it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import PreparedGraphScheme, SchemeJob
from rkpipe.errors import BackendError

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig


@dataclass(frozen=True)
class MatMulNBitsHqq(PreparedGraphScheme):
    def quantize(
        self, source: Any, dst: Path, job: SchemeJob, large: bool, state: Any
    ) -> dict[str, Any]:
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                HQQWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )
        except ImportError as exc:
            raise BackendError(
                f"matmul_nbits_hqq: cannot import onnxruntime's HQQ quantizer ({exc}); "
                "install onnx-ir and torch: pip install onnx-ir==1.1.0 torch==2.13.0"
            ) from exc
        cfg = job.cfg
        ops = tuple(cfg.op_types)
        quantizer = MatMulNBitsQuantizer(
            str(source) if isinstance(source, Path) else source,
            bits=4,
            block_size=cfg.block_size,
            accuracy_level=cfg.accuracy_level or None,
            op_types_to_quantize=ops,
            algo_config=HQQWeightOnlyQuantConfig(
                block_size=cfg.block_size, bits=4, op_types_to_quantize=ops
            ),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)
        return {}

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return {"bits": "4", "block_size": str(cfg.block_size), "algorithm": "HQQ"}


register(MatMulNBitsHqq("matmul_nbits_hqq", ("int4",), "MatMulNBits HQQ", block=True))
