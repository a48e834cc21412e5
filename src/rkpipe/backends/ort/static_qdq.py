"""The ``static_qdq`` scheme: static int8 QDQ with the calibration JSON as the reader.

Activation ranges are calibrated by running the fp32 export on the first
``quant.ort.calib_records`` records of ``calibration.json``: each record's ``input`` +
``target`` is tokenized with the float model's tokenizer (no special tokens added, at most
``quant.ort.calib_max_tokens`` tokens; for the Entropy / Percentile calibrators all cut to
the shortest record's length) and fed as ``input_ids`` / ``attention_mask`` /
``position_ids`` with an empty KV cache, exactly what the export expects for a prompt.
Only MatMuls with a constant weight are quantized (``MatMulConstBOnly``); attention's
activation x activation MatMuls stay float.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rkpipe.calibration.feeds import FeedsReader
from rkpipe.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

_ONNX_TO_NUMPY = {1: np.float32, 10: np.float16, 6: np.int32, 7: np.int64, 11: np.float64}
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")


def read_records(calibration_json: Path, limit: int) -> list[str]:
    """Texts (``input`` + ``target``) of the first ``limit`` records of a calibration JSON.

    Raises:
        BackendError: the file is missing, not a JSON list of records, or has none.
    """
    try:
        records = json.loads(Path(calibration_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(
            f"static_qdq: cannot read calibration set {calibration_json}: {exc}; "
            "run the calibrate stage first"
        ) from exc
    if not isinstance(records, list):
        raise BackendError(f"static_qdq: {calibration_json} is not a JSON list of records")
    texts = [
        str(r.get("input", "")) + str(r.get("target", ""))
        for r in records[:limit]
        if isinstance(r, dict)
    ]
    texts = [t for t in texts if t]
    if not texts:
        raise BackendError(
            f"static_qdq: {calibration_json} has no usable records "
            "(expected objects with 'input' and 'target')"
        )
    return texts


def input_specs(model: Any, config: dict[str, Any]) -> dict[str, tuple[Any, list]]:
    """``{name: (numpy dtype, dims)}`` of the graph inputs; symbolic dims are None, except the
    KV-cache heads / head size, filled from ``config`` (``config.json``) when symbolic."""
    specs = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if value.name.startswith("past_key_values.") and len(dims) == 4:
            heads = config.get("num_key_value_heads") or config.get("num_attention_heads")
            head_dim = config.get("head_dim") or _safe_div(
                config.get("hidden_size"), config.get("num_attention_heads")
            )
            dims = [1, dims[1] or heads, 0, dims[3] or head_dim]
        specs[value.name] = (_ONNX_TO_NUMPY.get(tensor.elem_type, np.float32), dims)
    return specs


def _safe_div(a: Any, b: Any) -> int | None:
    return int(a) // int(b) if a and b else None


def make_feed(ids: list[int], specs: dict[str, tuple[Any, list]]) -> dict[str, np.ndarray]:
    """One forward's inputs for a prompt of ``ids`` with an empty KV cache.

    Raises:
        ConfigError: the graph has an input this reader does not know how to fill.
    """
    n = len(ids)
    feed: dict[str, np.ndarray] = {}
    for name, (dtype, dims) in specs.items():
        if name == "input_ids":
            feed[name] = np.asarray([ids], dtype=dtype)
        elif name == "attention_mask":
            feed[name] = np.ones((1, n), dtype=dtype)
        elif name == "position_ids":
            feed[name] = np.arange(n, dtype=dtype)[None, :]
        elif name.startswith("past_key_values.") and None not in dims:
            feed[name] = np.zeros(dims, dtype=dtype)
        else:
            raise ConfigError(
                f"static_qdq: cannot build calibration input {name!r} {dims}; "
                "expected an optimum text-generation-with-past export"
            )
    return feed


def calibration_reader(
    calibration_json: Path,
    tokenizer_dir: Path,
    model: Any,
    records: int,
    max_tokens: int,
    equal_length: bool = False,
) -> FeedsReader:
    """A :class:`FeedsReader` feeding ``records`` calibration records to ``model``.

    ``equal_length`` cuts every record to the shortest one's length: onnxruntime's histogram
    calibrators (Entropy, Percentile) stack the batches and need equal shapes.

    Raises:
        BackendError: the calibration set or tokenizer cannot be read.
    """
    from transformers import AutoTokenizer

    texts = read_records(calibration_json, records)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:  # transformers raises assorted types
        raise BackendError(
            f"static_qdq: cannot load the tokenizer in {tokenizer_dir}: {exc}"
        ) from exc
    config = _read_config(Path(tokenizer_dir))
    specs = input_specs(model, config)
    token_lists = [
        list(tokenizer(t, add_special_tokens=False)["input_ids"])[:max_tokens] for t in texts
    ]
    token_lists = [ids for ids in token_lists if ids]
    if equal_length and token_lists:
        shortest = min(len(ids) for ids in token_lists)
        token_lists = [ids[:shortest] for ids in token_lists]
    feeds = [make_feed(ids, specs) for ids in token_lists]
    log.info(
        "static_qdq: %d calibration records, %d tokens",
        len(feeds),
        sum(f["input_ids"].shape[1] for f in feeds),
    )
    return FeedsReader(feeds)


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def quantize_static_qdq(
    source: Any, dst: Path, reader: FeedsReader, cfg: Any, nodes: list[str], large: bool
) -> None:
    """``quantize_static`` in QDQ format on the weight MatMuls ``nodes``.

    ``cfg`` is the :class:`~rkpipe.config.schema.OrtQuantConfig` (``weight_type``,
    ``activation_type``, ``per_channel``, ``calibrate_method``).

    Raises:
        ConfigError: unknown ``calibrate_method``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from rkpipe.backends.ort.reduce_range import resolve_reduce_range

    if cfg.calibrate_method not in CALIBRATE_METHODS:
        raise ConfigError(
            f"quant.ort.calibrate_method={cfg.calibrate_method!r} is not allowed; "
            f"allowed: {', '.join(CALIBRATE_METHODS)}"
        )

    class _Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

    quantize_static(
        source,
        str(dst),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes,
        per_channel=cfg.per_channel,
        reduce_range=resolve_reduce_range(cfg, "static_qdq")[0],
        activation_type=QuantType[cfg.activation_type],
        weight_type=QuantType[cfg.weight_type],
        calibrate_method=CalibrationMethod[cfg.calibrate_method],
        use_external_data_format=large,
        extra_options={
            "MatMulConstBOnly": True,
            "ActivationSymmetric": cfg.activation_type == "QInt8",
        },
    )
