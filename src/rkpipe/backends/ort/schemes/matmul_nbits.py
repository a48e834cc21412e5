"""``matmul_nbits`` int4/int8: ``MatMulNBitsQuantizer`` (weight-only, block-wise RTN,
symmetric) with ``block_size`` and ``accuracy_level``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import PreparedGraphScheme, SchemeJob
from rkpipe.errors import BackendError

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig

SYMMETRIC = True


def nbits_params(cfg: OrtQuantConfig, dtype: str) -> dict[str, str]:
    """The params of a symmetric block-wise weight-only scheme."""
    return {
        "bits": "8" if dtype == "int8" else "4",
        "block_size": str(cfg.block_size),
        "symmetric": str(SYMMETRIC),
    }


@dataclass(frozen=True)
class MatMulNBits(PreparedGraphScheme):
    def quantize(
        self, source: Any, dst: Path, job: SchemeJob, large: bool, state: Any
    ) -> dict[str, Any]:
        bits = 8 if job.dtype == "int8" else 4
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        except ImportError as exc:
            raise BackendError(
                f"onnxruntime {bits}-bit quantization: cannot import MatMulNBitsQuantizer "
                f"({exc}); install onnx-ir: pip install onnx-ir==1.1.0"
            ) from exc
        cfg = job.cfg
        quantizer = MatMulNBitsQuantizer(
            str(source) if isinstance(source, Path) else source,
            bits=bits,
            block_size=cfg.block_size,
            is_symmetric=SYMMETRIC,
            accuracy_level=cfg.accuracy_level or None,
            op_types_to_quantize=tuple(cfg.op_types),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)
        return {}

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return nbits_params(cfg, dtype)


register(MatMulNBits("matmul_nbits", ("int4", "int8"), "MatMulNBits", block=True))
