"""How much RAM a model conversion needs, and a refusal before one that cannot fit."""

from __future__ import annotations

import logging
import os

from rkpipe.errors import ModelSourceError

log = logging.getLogger(__name__)

BYTES_PER_PARAM = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}
_BASE_GB = 0.5
_BACKEND_FACTORS = {"gguf": 2.0, "hf": 2.0, "onnxruntime": 4.5, "rkllm": 4.0}


def estimate_conversion_memory_gb(param_count: int, dtype: str, backend: str) -> float:
    """Estimate the peak RAM (GB, 10^9 bytes) a conversion of a ``param_count`` model needs.

    Formula: ``0.5 GB + param_count * bytes(dtype) * factor(backend) / 1e9``.

    * 0.5 GB: Python + torch + transformers after import (measured 0.46 GB here).
    * ``bytes(dtype)``: 4 for float32, 2 for float16/bfloat16 -- the dtype the weights are
      loaded in (rkllm-toolkit's ``load_dtype``, our ``model.dtype``).
    * ``factor``:
      ``gguf`` 2.0 -- de-quantize + save: measured 1.28 GB peak for SmolLM2-135M (0.54 GB of
      fp32 weights, i.e. 1.5x above the base), rounded up for headroom;
      ``hf`` 2.0 -- load a ``.bin`` checkpoint and re-save it as safetensors (two copies);
      ``onnxruntime`` 4.5 -- optimum's ``main_export``: measured 2.9 GB peak for 0.54 GB of
      weights (4.5x above the base: model, traced graph, ONNX proto, serialisation buffer);
      ``rkllm`` 4.0 -- rkllm-toolkit keeps the float model, its optimised copy and the quantized
      weights; users report a 32 GB host converting only up to 1.5B (6 GB fp32, ~5x) on 1.0.x
      (airockchip/rknn-llm#30) and OOM kills on 14B (#163); later toolkits use somewhat less.

    Raises ModelSourceError for an unknown dtype or backend.
    """
    if dtype not in BYTES_PER_PARAM:
        raise ModelSourceError(
            f"unknown dtype {dtype!r} for the memory estimate; "
            f"expected one of {sorted(BYTES_PER_PARAM)}"
        )
    if backend not in _BACKEND_FACTORS:
        raise ModelSourceError(
            f"unknown backend {backend!r} for the memory estimate; "
            f"expected one of {sorted(_BACKEND_FACTORS)}"
        )
    weights = param_count * BYTES_PER_PARAM[dtype] * _BACKEND_FACTORS[backend] / 1e9
    return round(_BASE_GB + weights, 2)


def memory_preflight(required_gb: float, *, refuse_ratio: float = 1.0) -> str:
    """Compare ``required_gb`` with the RAM psutil reports as available; return a summary line.

    Logs a warning above 80 % of the available memory and raises ModelSourceError (with the
    numbers and the fixes) above ``refuse_ratio`` (1.0 = 100 %). The environment variable
    ``RKPIPE_MEMORY_REFUSE_RATIO`` overrides ``refuse_ratio`` for users who rely on swap.
    """
    import psutil

    refuse_ratio = float(os.environ.get("RKPIPE_MEMORY_REFUSE_RATIO", refuse_ratio))
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    available_gb, swap_gb = vm.available / 1e9, swap.free / 1e9
    ratio = required_gb / max(available_gb, 1e-9)
    summary = (
        f"needs ~{required_gb:.1f} GB of {available_gb:.1f} GB available RAM "
        f"({ratio:.0%}; total {vm.total / 1e9:.1f} GB, free swap {swap_gb:.1f} GB)"
    )
    if ratio > refuse_ratio:
        raise ModelSourceError(
            f"not enough memory: the conversion {summary}; close other programs, use a host "
            f"with more RAM (Rockchip recommends 32-64 GB), or add swap and set "
            f"RKPIPE_MEMORY_REFUSE_RATIO={max(2.0, round(ratio + 0.5, 1))} to proceed anyway"
        )
    if ratio > 0.8:
        log.warning("memory is tight: the conversion %s", summary)
    else:
        log.info("memory preflight: the conversion %s", summary)
    return summary
