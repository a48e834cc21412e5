"""The rkllm-toolkit platform matrix (v1.3.0) and the spellings users type.

Facts from Rockchip's rknn-llm documentation: which ``quantized_dtype`` and how many
NPU cores each ``target_platform`` accepts. ``host`` is the machine running the
pipeline; only the onnxruntime backend can target it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PlatformSpec:
    """What one SoC supports."""

    name: str
    rkllm_dtypes: tuple[str, ...]
    npu_cores: tuple[int, ...]

    @property
    def max_npu_cores(self) -> int:
        return max(self.npu_cores) if self.npu_cores else 0


PLATFORMS: dict[str, PlatformSpec] = {
    "rk3588": PlatformSpec("rk3588", ("w8a8", "w8a8_g128", "w8a8_g256", "w8a8_g512"), (1, 2, 3)),
    "rk3576": PlatformSpec(
        "rk3576", ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"), (1, 2)
    ),
    "rk3562": PlatformSpec(
        "rk3562", ("w8a8", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w4a8_g32"), (1,)
    ),
    "rv1126b": PlatformSpec(
        "rv1126b", ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"), (1,)
    ),
    "host": PlatformSpec("host", (), ()),
}

RKLLM_DTYPES: tuple[str, ...] = tuple(
    sorted({d for spec in PLATFORMS.values() for d in spec.rkllm_dtypes})
)
ORT_DTYPES: tuple[str, ...] = ("int8", "int4")
# Every quant.dtype some backend takes; which one applies is a cross-field rule (validate).
ALL_DTYPES: tuple[str, ...] = ORT_DTYPES + RKLLM_DTYPES

# quantized_algorithm -> dtypes it applies to (None: any). grq is w4a16-only.
RKLLM_ALGORITHMS: dict[str, tuple[str, ...] | None] = {
    "normal": None,
    "grq": ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128"),
    "gdq": ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128"),
}
RKLLM_MAX_CONTEXT = 16384


def normalise_name(value: str) -> str:
    """Lower-case a platform or dtype as rkllm-toolkit 1.3 spells it (``RK3576`` -> ``rk3576``)."""
    return value.strip().lower()


def group_size(dtype: str) -> int | None:
    """The group size of a group-wise dtype (``w4a16_g128`` -> 128), or None."""
    _, sep, suffix = dtype.partition("_g")
    return int(suffix) if sep and suffix.isdigit() else None


# ``normal``/``grq``/``gdq``, optionally with the LoRA-recovery rank ``_rN`` (rkllm-toolkit guide).
ALGORITHM_FORM = re.compile(r"^(normal|grq|gdq)(?:_r(\d+))?$")
RECOVERY_RANKS = range(1, 65)  # N of _rN: 1 to 64


def algorithm_allowed(algorithm: str, dtype: str) -> bool:
    """Whether ``quantized_algorithm`` applies to ``dtype`` (also the ``_rN`` recovery forms)."""
    match = ALGORITHM_FORM.match(algorithm)
    if match is None:
        return False
    allowed = RKLLM_ALGORITHMS[match.group(1)]
    return allowed is None or dtype in allowed


def algorithm_problem(algorithm: str, device: str) -> str | None:
    """What the toolkit's guide says against ``algorithm`` on the conversion ``device``: an
    ``_rN`` rank outside 1..64, or ``grq`` off the GPU ("grq must use the GPU")."""
    match = ALGORITHM_FORM.match(algorithm)
    if match is None:
        allowed = "normal, grq, or their _rN forms"
        return f"quant.algorithm={algorithm!r} is not allowed; allowed: {allowed}"
    if match.group(2) is not None and int(match.group(2)) not in RECOVERY_RANKS:
        return f"quant.algorithm={algorithm!r}: the LoRA-recovery rank N of _rN must be 1 to 64"
    if match.group(1) == "grq" and device != "cuda":
        return (
            f"quant.algorithm={algorithm!r} needs quant.rkllm.device=cuda (rkllm-toolkit's "
            f"guide: grq must use the GPU), not {device!r}; or use quant.algorithm=normal"
        )
    return None
