"""Speech recognition (Whisper): acquire, export to ONNX, quantize, synthesize a test set, evaluate.

The modules import torch, transformers, optimum and onnxruntime inside their functions, so
importing this package is cheap. The decoding engine itself lives in
``rkpipe.engines.ort_whisper`` (self-contained, pushed alone to a board).
"""

from rkpipe.asr.evaluate import evaluate_asr, load_testset
from rkpipe.asr.export import export_fp32_onnx
from rkpipe.asr.model import acquire_asr, build_whisper_tokenizer
from rkpipe.asr.quantize import quantize_asr
from rkpipe.asr.testset import synthesize_testset

__all__ = [
    "acquire_asr",
    "build_whisper_tokenizer",
    "evaluate_asr",
    "export_fp32_onnx",
    "load_testset",
    "quantize_asr",
    "synthesize_testset",
]
