"""Speech recognition (Whisper, wav2vec2 CTC): acquire, export to ONNX, quantize, evaluate.

This package imports none of its modules (import them by name); they import torch, transformers,
optimum and onnxruntime inside their functions, so config validation reads the ASR registries
(architectures, sources, quantizers, backends) in its first second. The decoding engines are
``rkpipe.engines.ort_whisper`` and ``rkpipe.engines.ort_ctc`` (self-contained, pushed to a board
with ``engine_shared.py``); ``engine.json`` in an exported directory names the one to run
(:func:`rkpipe.asr.engine.engine_name`). ``asr.backend=rknn`` also converts the encoder for the
Rockchip NPU (:mod:`rkpipe.asr.rknn`, rknn-toolkit2 in its own venv)."""
