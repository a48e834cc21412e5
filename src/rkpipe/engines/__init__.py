"""Inference engines run on boards: stdlib + numpy + onnxruntime only (the rkllm runner: stdlib
only). Each is pushed to a board with ``engine_shared.py``, the one rkpipe module they import."""
