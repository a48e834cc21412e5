"""rkpipe: Hugging Face model -> quantized, measured edge model for Rockchip NPUs and ONNX Runtime."""

__version__ = "0.1.0"
