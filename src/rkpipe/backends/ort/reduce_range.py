"""``quant.ort.reduce_range``: 7-bit int8 weights where onnxruntime's u8 x s8 kernels saturate."""

from __future__ import annotations

from typing import Any


def resolve_reduce_range(cfg: Any, scheme: str) -> tuple[bool, str]:
    """Whether to quantize int8 weights to 7 bits, and why (recorded in the params).

    onnxruntime's u8 x s8 MatMulInteger runs on AVX2's ``vpmaddubsw`` on x86 CPUs without
    VNNI; it adds two u8 x s8 products into a saturating int16, and 2 x 255 x 127 overflows it.
    onnxruntime documents ``reduce_range`` (7-bit weights: 2 x 255 x 63 fits) for that case.
    ``auto`` turns it on where the overflow is common enough to break a model: per-channel
    QInt8 weights, whose every row spans the full 8-bit range (measured on SmolLM2: PPL in the
    millions on an AVX2 CPU without it, see docs/benchmarks.md). The choice does not depend on
    the host that quantizes: the artifact is the same everywhere and runs on any x86 CPU.
    """
    setting = str(cfg.reduce_range).lower()
    u8_activations = scheme == "dynamic" or cfg.activation_type == "QUInt8"
    if scheme not in ("dynamic", "static_qdq") or cfg.weight_type != "QInt8" or not u8_activations:
        return False, "not applicable (no u8 x s8 int8 MatMul)"
    if setting in ("true", "false"):
        return setting == "true", f"set by quant.ort.reduce_range={setting}"
    if cfg.per_channel:
        return True, "auto: per-channel QInt8 weights saturate u8 x s8 on x86 without VNNI"
    return False, "auto: per-tensor QInt8 weights rarely reach the saturating range"


def int8_weight_params(cfg: Any, scheme: str) -> dict[str, str]:
    """The params of an int8 MatMulInteger/QDQ scheme: weight type, granularity, 7-bit or not."""
    reduce_range, why = resolve_reduce_range(cfg, scheme)
    return {
        "weight_type": cfg.weight_type,
        "per_channel": str(cfg.per_channel),
        "reduce_range": str(reduce_range),
        "reduce_range_reason": why,
    }
