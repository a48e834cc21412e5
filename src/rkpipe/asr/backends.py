"""Where the quantized ASR model runs (``asr.backend``): what the quantize_asr stage converts
beyond the onnxruntime models it always writes.

``onnxruntime``: nothing more. ``rknn``: the encoder, converted by rknn-toolkit2 in its own
interpreter (:mod:`rkpipe.asr.rknn`). The stage and config validation ask
:data:`ASR_BACKENDS`; nothing else lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rkpipe.errors import AsrError
from rkpipe.registry import Registry

if TYPE_CHECKING:
    from rkpipe.config.schema import AsrConfig

# asr.backend -> convert(fp32_dir, quantized_dir, asr config, test set dir) -> metrics
ASR_BACKENDS: Registry = Registry(
    "asr.backend",
    {
        "onnxruntime": "rkpipe.asr.backends:onnxruntime_only",
        "rknn": "rkpipe.asr.rknn:convert_for_stage",
    },
    error=AsrError,
)


def onnxruntime_only(
    fp32_dir: Path, quantized_dir: Path, cfg: AsrConfig, testset_dir: Path | None = None
) -> dict:
    """Nothing beyond the onnxruntime models quantize_asr writes anyway."""
    return {}
