"""LLM-side steps that are independent of the quantization backend (ONNX export)."""
