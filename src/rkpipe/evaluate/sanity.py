"""Is a variant numerically broken? Checked by ``evaluate`` before any figure is reported.

A quantized LLM whose logits are NaN or infinite, whose perplexity is more than
:data:`MAX_PPL_RATIO` times the float model's, or whose argmax agrees with the float model's
on fewer than :data:`MIN_TOP1` of the positions is not a "lossy" variant: it is broken, and a
table that prints "+32733912.3 %" beside healthy rows only misleads. Such a variant fails the
stage with one line (its PPL, the float PPL, top-1 and the likely cause) unless
``eval.keep_broken`` keeps it, flagged, for study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rkpipe.errors import RkpipeError

MAX_PPL_RATIO = 10.0
MIN_TOP1 = 0.2
BROKEN_METRIC = "llm_broken"


class BrokenVariantError(RkpipeError):
    """The variant's LLM is numerically broken (see the module docstring)."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def broken_reasons(metrics: Mapping[str, Any]) -> list[str]:
    """Why the LLM metrics show a broken variant (empty: sane, or no LLM was evaluated)."""
    if "ppl" not in metrics:
        return []
    ppl, ppl_float, top1 = (
        metrics.get("ppl"),
        metrics.get("ppl_float"),
        metrics.get("top1_agreement"),
    )
    if not all(_finite(metrics.get(k)) for k in ("ppl", "kld_mean")):
        return ["NaN or inf in the logits (PPL or KLD is not finite)"]
    reasons = []
    if _finite(ppl_float) and ppl > MAX_PPL_RATIO * ppl_float:
        reasons.append(f"PPL more than {MAX_PPL_RATIO:g}x the float model's")
    if _finite(top1) and top1 < MIN_TOP1:
        reasons.append(f"top-1 agreement below {MIN_TOP1:g}")
    return reasons


def likely_cause(manifest: Mapping[str, Any], host: Mapping[str, Any]) -> str:
    """The most likely cause, from the quant manifest and the host fingerprint."""
    from rkpipe.hostinfo import has_vnni

    u8s8 = manifest.get("scheme") == "dynamic" and manifest.get("weight_type") == "QInt8"
    if u8s8 and not manifest.get("reduce_range") and not has_vnni(host):
        return (
            "u8 x s8 MatMulInteger saturates on x86 without VNNI (this host has no "
            "avx512_vnni/avx_vnni/amx_int8); rebuild with quant.ort.reduce_range=true"
        )
    if u8s8 and manifest.get("per_channel") and not manifest.get("reduce_range"):
        return "per-channel int8 weights use the full 8-bit range; try quant.ort.reduce_range=true"
    return "the quantization error of this scheme is too large for this model"


def summarize(metrics: Mapping[str, Any], reasons: list[str], cause: str) -> str:
    """One line: the figures, what is wrong, and the likely cause."""

    def fmt(key: str, digits: int) -> str:
        value = metrics.get(key)
        return f"{value:.{digits}f}" if _finite(value) else str(value)

    return (
        f"the quantized LLM is broken: PPL {fmt('ppl', 2)} vs float {fmt('ppl_float', 2)}, "
        f"top-1 agreement {fmt('top1_agreement', 3)} ({'; '.join(reasons)}); likely cause: "
        f"{cause}. Set eval.keep_broken=true to keep its figures for study"
    )
