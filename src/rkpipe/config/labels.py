"""Names a person reads for a variant's choices, from its flattened params (a run's params, or
a config's): the report, the comparison table and the MLflow run name all use these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rkpipe.backends.ort.schemes import SCHEMES, OrtScheme


def quant_label(params: Mapping[str, Any]) -> str:
    """The quant type from a variant's flattened params (a run's, or a config's), e.g. ``w8a8``,
    ``ort int8 dynamic (QInt8, per-tensor)``, ``ort int4 MatMulNBits (block 32, acc 4)``."""

    def get(key: str, default: str = "?") -> str:
        return str(params.get(key, default))

    backend, dtype = get("quant.backend"), get("quant.dtype")
    if backend != "onnxruntime":
        return dtype
    name = get("quant.ort.scheme", "dynamic")
    scheme = SCHEMES.get(name) or OrtScheme(name, (), name)  # a run of a since-removed scheme
    if scheme.block:
        size = get("quant.ort.block_size")
        size = str(scheme.block_size(int(size))) if size.isdigit() else size
        details = [f"block {size}", f"acc {get('quant.ort.accuracy_level')}"]
        mode = get("quant.ort.q4_1_mode", "residual")
        if scheme.gguf and mode != "residual":
            details.append(f"Q4_1 {mode}")
    else:
        per_channel = get("quant.ort.per_channel") in ("True", "true")
        details = [get("quant.ort.weight_type"), "per-channel" if per_channel else "per-tensor"]
    if get("quant.ort.embedding_bits", "0") not in ("0", "None"):
        details.append(f"{get('quant.ort.embedding_bits')}-bit embedding")
    return f"ort {dtype} {scheme.label} ({', '.join(details)})"


def config_quant_label(cfg: Any) -> str:
    """:func:`quant_label` of a :class:`~rkpipe.config.schema.PipelineConfig`."""
    from rkpipe.config.loader import config_dict, flatten

    return quant_label(flatten({"quant": config_dict(cfg)["quant"]}))
