"""The LLM, independent of the quantization backend: acquire (sources, GGUF, manifest), export."""
