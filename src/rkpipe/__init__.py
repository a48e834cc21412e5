"""rkpipe: Hugging Face model -> quantized, measured edge model (Rockchip NPU, onnxruntime)."""

__version__ = "0.1.0"
