"""Calibration data for quantization: sources, record builder, file validator, feed reader.

``load_inputs`` (:mod:`.sources`) -> ``build_records`` (:mod:`.builder`: chat template,
truncation, float-model targets) -> ``write_calibration`` (deterministic JSON) ->
``validate_calibration_file`` (:mod:`.validate`, before a toolkit reads it). The format is
rkllm-toolkit's: a JSON list of ``{"input": str, "target": str}``. :mod:`.feeds` is the
onnxruntime calibration reader both static-QDQ quantizers use.

This package imports none of its modules: import them by name (the quantizers read
:mod:`.feeds` without pulling in the builder and its config).
"""
