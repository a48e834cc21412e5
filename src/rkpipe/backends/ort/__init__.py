"""Building blocks of the onnxruntime backend's schemes.

* :mod:`.nbits`: block-quantized weights (``MatMulNBits``/``GatherBlockQuantized``) and the
  graph surgery that swaps a float weight ``MatMul`` or embedding ``Gather`` for them;
* :mod:`.gguf_exact`: the GGUF's own Q4_0/Q4_1/Q8_0 blocks re-encoded exactly;
* :mod:`.static_qdq`: static QDQ int8 with the calibration JSON as the reader;
* :mod:`.genai`: onnxruntime-genai's model builder, run in its own interpreter.
"""
