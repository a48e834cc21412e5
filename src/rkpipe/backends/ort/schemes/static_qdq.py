"""``static_qdq`` int8: ``quantize_static`` in QDQ format, calibrated on the calibration JSON
(the reader and the quantizer call are in :mod:`rkpipe.backends.ort.static_qdq`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.backends.ort.reduce_range import int8_weight_params
from rkpipe.backends.ort.schemes import register
from rkpipe.backends.ort.schemes.base import PreparedGraphScheme, SchemeJob

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig


@dataclass(frozen=True)
class StaticQdq(PreparedGraphScheme):
    def inspect(self, job: SchemeJob, model: Any) -> Any:
        from rkpipe.backends.ort.nbits import weight_nodes
        from rkpipe.backends.ort.static_qdq import calibration_reader

        cfg, request = job.cfg, job.request
        reader = calibration_reader(
            request.calibration_json,
            request.float_model_dir,
            model,
            cfg.calib_records,
            cfg.calib_max_tokens,
            equal_length=cfg.calibrate_method != "MinMax",
        )
        return reader, [n.name for n in weight_nodes(model.graph)[0]]

    def quantize(
        self, source: Any, dst: Path, job: SchemeJob, large: bool, state: Any
    ) -> dict[str, Any]:
        from rkpipe.backends.ort.static_qdq import quantize_static_qdq

        reader, nodes = state
        quantize_static_qdq(source, dst, reader, job.cfg, nodes, large)
        return {"calib_records_used": len(reader)}

    def params(self, cfg: OrtQuantConfig, dtype: str, facts: dict[str, Any]) -> dict[str, str]:
        return int8_weight_params(cfg, self.name) | {
            "activation_type": cfg.activation_type,
            "calibrate_method": cfg.calibrate_method,
            "calib_records": str(cfg.calib_records),
            "calib_max_tokens": str(cfg.calib_max_tokens),
        }


register(StaticQdq("static_qdq", ("int8",), "static QDQ"))
