"""Speech recognition (Whisper, wav2vec2 CTC): acquire, export to ONNX, quantize, evaluate.

The modules import torch, transformers, optimum and onnxruntime inside their functions, so
importing this package is cheap. The decoding engines live in ``rkpipe.engines.ort_whisper``
and ``rkpipe.engines.ort_ctc`` (self-contained, pushed alone to a board); ``engine.json`` in an
exported directory names the one to run (:func:`engine_name`). ``asr.backend=rknn`` converts the
encoder for the Rockchip NPU (:func:`convert_encoder_rknn`, rknn-toolkit2 in its own venv).
"""

from rkpipe.asr.engine import engine_name, load_engine
from rkpipe.asr.evaluate import evaluate_asr, load_testset
from rkpipe.asr.export import export_fp32_onnx
from rkpipe.asr.model import acquire_asr, build_whisper_tokenizer
from rkpipe.asr.quantize import quantize_asr
from rkpipe.asr.rknn import convert_encoder_rknn
from rkpipe.asr.testset import synthesize_testset

__all__ = [
    "acquire_asr",
    "build_whisper_tokenizer",
    "convert_encoder_rknn",
    "engine_name",
    "evaluate_asr",
    "export_fp32_onnx",
    "load_engine",
    "load_testset",
    "quantize_asr",
    "synthesize_testset",
]
