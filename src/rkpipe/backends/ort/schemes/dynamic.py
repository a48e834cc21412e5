"""``dynamic`` int8: ``quantize_dynamic`` (MatMul -> DynamicQuantizeLinear + MatMulInteger) with
``weight_type``, ``per_channel`` and ``reduce_range``. ``dynamic`` with ``quant.dtype=int4`` is
the legacy spelling of ``matmul_nbits``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.reduce_range import int8_weight_params, resolve_reduce_range
from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import PreparedGraphScheme, SchemeJob

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig


@dataclass(frozen=True)
class DynamicInt8(PreparedGraphScheme):
    def runs_as(self, dtype: str) -> str:
        return "matmul_nbits" if dtype == "int4" else self.name

    def quantize(
        self, source: Any, dst: Path, job: SchemeJob, large: bool, state: Any
    ) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        cfg = job.cfg
        quantize_dynamic(
            source,
            dst,
            op_types_to_quantize=list(cfg.op_types),
            per_channel=cfg.per_channel,
            reduce_range=resolve_reduce_range(cfg, self.name)[0],
            weight_type=QuantType[cfg.weight_type],
            use_external_data_format=large,
        )
        return {}

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return int8_weight_params(cfg, self.name)


register(DynamicInt8("dynamic", ("int8", "int4"), "dynamic"))
