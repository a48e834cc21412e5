"""onnxruntime backend: quantization schemes for the fp32 ONNX export (``quant.ort.scheme``).

* ``dynamic`` int8: ``quantize_dynamic`` (MatMul -> DynamicQuantizeLinear + MatMulInteger) with
  ``weight_type`` / ``per_channel``; ``dynamic`` with ``quant.dtype=int4`` is the legacy
  spelling of ``matmul_nbits``;
* ``matmul_nbits`` int4/int8: ``MatMulNBitsQuantizer`` (weight-only, block-wise RTN,
  symmetric) with ``block_size`` and ``accuracy_level``;
* ``static_qdq`` int8: ``quantize_static`` in QDQ format, calibrated on the calibration JSON
  (:mod:`rkpipe.backends.ort.static_qdq`);
* ``gguf_exact``: the source GGUF's own Q4_0/Q4_1/Q8_0 blocks carried losslessly into
  MatMulNBits (:mod:`rkpipe.backends.ort.gguf_exact`);
* ``genai_int4`` / ``genai_int8`` / ``genai_gguf_exact``: onnxruntime-genai's fused builder
  graph, built in its own interpreter (:mod:`rkpipe.backends.ort.genai`).

``embedding_bits`` (4 or 8) quantizes the token embedding and the tied lm_head into one
shared block-quantized table (``GatherBlockQuantized`` + ``MatMulNBits``) before the
``dynamic`` / ``matmul_nbits`` / ``static_qdq`` quantizers run. Otherwise weights reached
through a ``Transpose`` of an initializer (optimum's tied lm_head) are folded into a
transposed copy, so the quantizers, which only see initializer B inputs, quantize it too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkpipe.backends import register
from rkpipe.backends.base import QuantizeRequest, QuantizeResult
from rkpipe.backends.ort.reduce_range import resolve_reduce_range
from rkpipe.backends.ort.schemes import EMBEDDING_BITS, Q4_1_MODES, get_scheme
from rkpipe.config.schema import OrtQuantConfig, QuantConfig
from rkpipe.errors import BackendError, ConfigError
from rkpipe.io import atomic_path, dir_size_mb, write_json_atomic
from rkpipe.llm.export import ONNX_MODEL_FILE, copy_inference_files
from rkpipe.measure.memory import PeakRss

log = logging.getLogger(__name__)

MANIFEST_FILE = "quant_manifest.json"
DTYPES = ("int8", "int4")
WEIGHT_TYPES = ("QInt8", "QUInt8")
PROTOBUF_LIMIT = 2_000_000_000  # bytes; larger models need external data
INT4_SYMMETRIC = True
RESIDUAL_SUFFIXES = ("_Residual", "_BlockSum")


@register("onnxruntime")
class OnnxruntimeBackend:
    """Quantize an LLM for onnxruntime with one of the schemes of the module docstring."""

    name = "onnxruntime"

    def quantize(self, request: QuantizeRequest) -> QuantizeResult:
        """Quantize into ``request.out_dir``.

        The output holds ``model.onnx`` (+ external data past 2 GB), the config and tokenizer
        files of the float model, ``quant_manifest.json`` and, for the genai schemes,
        ``genai_config.json`` and ``genai_builder.log``.

        Raises:
            ConfigError: unsupported ``quant.dtype``, scheme, weight type or model source.
            BackendError: a missing input (fp32 export, GGUF, calibration set), or the
                quantizer / builder failed; nothing is left in ``out_dir``.
        """
        _check_config(request.quant)
        scheme = effective_scheme(request.quant)
        src = None if get_scheme(scheme).genai else _fp32_model(request)
        with atomic_path(request.out_dir) as tmp, PeakRss() as rss:
            tmp.mkdir()
            start = time.perf_counter()
            facts = _run_scheme(scheme, request, src, tmp)
            quantize_s = time.perf_counter() - start
            copy_inference_files(src.parent if src else request.float_model_dir, tmp)
            counts = count_ops(tmp / ONNX_MODEL_FILE)
            params = _params(request, scheme, facts)
            write_json_atomic(tmp / MANIFEST_FILE, _manifest(request.quant, params, counts, facts))
            size_mb = dir_size_mb(tmp)
        metrics = {
            "size_mb": round(size_mb, 3),
            "quantize_s": round(quantize_s, 3),
            "quantize_peak_rss_mb": round(rss.peak_mb, 1),
            **{k: float(v) for k, v in counts.items()},
            **{k: float(v) for k, v in facts.items() if isinstance(v, (int, float))},
        }
        if src is not None:
            metrics["fp32_size_mb"] = round(dir_size_mb(src.parent), 3)
        log.info("onnxruntime %s %s: %s", scheme, request.quant.dtype, metrics)
        out = Path(request.out_dir)
        return QuantizeResult(out / ONNX_MODEL_FILE, out, metrics, params)


def effective_scheme(quant: QuantConfig) -> str:
    """The scheme that runs: ``dynamic`` with ``dtype=int4`` is ``matmul_nbits``."""
    scheme = quant.ort.scheme
    return "matmul_nbits" if scheme == "dynamic" and quant.dtype == "int4" else scheme


def _check_config(quant: QuantConfig) -> None:
    ort_cfg = quant.ort
    if quant.dtype not in DTYPES:
        raise ConfigError(
            f"quant.dtype={quant.dtype!r} is not supported by quant.backend=onnxruntime; "
            f"allowed: {', '.join(DTYPES)}"
        )
    scheme = get_scheme(ort_cfg.scheme)
    if quant.dtype not in scheme.dtypes:
        raise ConfigError(
            f"quant.dtype={quant.dtype!r} does not apply to quant.ort.scheme="
            f"{ort_cfg.scheme!r}; allowed: {', '.join(scheme.dtypes)}"
        )
    if quant.dtype == "int8" and ort_cfg.weight_type not in WEIGHT_TYPES:
        raise ConfigError(
            f"quant.ort.weight_type={ort_cfg.weight_type!r} is not allowed; "
            f"allowed: {', '.join(WEIGHT_TYPES)}"
        )
    if ort_cfg.embedding_bits not in EMBEDDING_BITS:
        raise ConfigError(
            f"quant.ort.embedding_bits={ort_cfg.embedding_bits!r} is not allowed; "
            f"allowed: {', '.join(map(str, EMBEDDING_BITS))}"
        )
    if ort_cfg.decode_accuracy_level not in (None, 0, 1, 2, 3, 4):
        raise ConfigError(
            f"quant.ort.decode_accuracy_level={ort_cfg.decode_accuracy_level!r} is "
            "not allowed; allowed: null, 0, 1, 2, 3, 4"
        )
    if ort_cfg.q4_1_mode not in Q4_1_MODES:
        raise ConfigError(
            f"quant.ort.q4_1_mode={ort_cfg.q4_1_mode!r} is not allowed; "
            f"allowed: {', '.join(Q4_1_MODES)}"
        )
    if str(ort_cfg.reduce_range).lower() not in ("auto", "true", "false"):
        raise ConfigError(
            f"quant.ort.reduce_range={ort_cfg.reduce_range!r} is not allowed; "
            "allowed: auto, true, false"
        )
    if not ort_cfg.op_types:
        raise ConfigError("quant.ort.op_types is empty; expected e.g. [MatMul]")


def _fp32_model(request: QuantizeRequest) -> Path:
    if request.onnx_fp32_dir is None:
        raise BackendError(
            "onnxruntime quantize: request.onnx_fp32_dir is None; the onnxruntime backend "
            "starts from the fp32 ONNX export, run the export stage first"
        )
    path = Path(request.onnx_fp32_dir) / ONNX_MODEL_FILE
    if not path.is_file():
        raise BackendError(
            f"onnxruntime quantize: {path} not found; expected the fp32 ONNX export "
            "(rkpipe.llm.export.export_fp32_onnx) there"
        )
    return path


def _run_scheme(scheme: str, request: QuantizeRequest, src: Path | None, tmp: Path) -> dict:
    """Write ``tmp/model.onnx`` with ``scheme``; return facts worth recording."""
    try:
        if get_scheme(scheme).genai:
            return _genai(scheme, request, tmp)
        if get_scheme(scheme).gguf:
            return _gguf_exact(request, src, tmp / ONNX_MODEL_FILE)
        return _quantize(src, tmp / ONNX_MODEL_FILE, request, scheme)
    except (ConfigError, BackendError):
        raise
    except Exception as exc:  # the quantizers raise assorted types
        raise BackendError(
            f"onnxruntime {scheme} ({request.quant.dtype}) quantization failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _quantize(src: Path, dst: Path, request: QuantizeRequest, scheme: str) -> dict:
    """Embedding (optional), transpose folding, then the onnxruntime quantizer of ``scheme``."""
    import onnx

    from rkpipe.backends.ort.nbits import quantize_tied_embedding

    quant = request.quant
    large = dir_size_mb(src) * 1e6 > PROTOBUF_LIMIT
    model = onnx.load(str(src), load_external_data=True)
    facts: dict[str, Any] = {}
    if quant.ort.embedding_bits:
        facts.update(
            quantize_tied_embedding(
                model,
                quant.ort.embedding_bits,
                quant.ort.block_size,
                quant.ort.accuracy_level,
                quant.ort.accuracy_level_8bit,
            )
        )
    facts["folded_weight_transposes"] = fold_weight_transposes(model)
    reader = _static_reader(request, model) if scheme == "static_qdq" else None
    nodes = _weight_matmul_names(model)
    with tempfile.TemporaryDirectory(prefix=".prep.", dir=dst.parent.parent) as work:
        source: Any = model
        if large:  # a >2 GB ModelProto cannot be serialised: hand the quantizer a file
            source = Path(work) / "prepared.onnx"
            onnx.save(model, str(source), save_as_external_data=True, location="prepared.data")
        del model
        with _quiet_quantizer_logs():
            if scheme == "dynamic":
                _quantize_int8(source, dst, quant.ort, large, scheme)
            elif scheme == "static_qdq":
                from rkpipe.backends.ort.static_qdq import quantize_static_qdq

                quantize_static_qdq(source, dst, reader, quant.ort, nodes, large)
                facts["calib_records_used"] = len(reader)
            else:
                _quantize_nbits(source, dst, quant.ort, large, 8 if quant.dtype == "int8" else 4)
    return facts


def _weight_matmul_names(model: Any) -> list[str]:
    from rkpipe.backends.ort.nbits import weight_nodes

    return [n.name for n in weight_nodes(model.graph)[0]]


def _static_reader(request: QuantizeRequest, model: Any) -> Any:
    from rkpipe.backends.ort.static_qdq import calibration_reader

    cfg = request.quant.ort
    return calibration_reader(
        request.calibration_json,
        request.float_model_dir,
        model,
        cfg.calib_records,
        cfg.calib_max_tokens,
        equal_length=cfg.calibrate_method != "MinMax",
    )


def _gguf_exact(request: QuantizeRequest, src: Path, dst: Path) -> dict:
    """Replace the export's weights by the source GGUF's exact blocks; save to ``dst``."""
    import onnx

    from rkpipe.backends.ort.gguf_exact import (
        apply_gguf_exact,
        gguf_path_from_manifest,
        load_gguf_weights,
    )

    path = gguf_path_from_manifest(request.float_model_dir)
    weights = load_gguf_weights(path)
    model = onnx.load(str(src), load_external_data=True)
    cfg = request.quant.ort
    report = apply_gguf_exact(
        model,
        weights,
        cfg.accuracy_level,
        cfg.accuracy_level_8bit,
        cfg.q4_1_mode,
        cfg.embedding_bits,
    )
    del weights
    facts = {**report.as_dict(), "gguf_file": path.name, **_split_decode(model, cfg)}
    _save(model, dst)
    return facts


def _genai(scheme: str, request: QuantizeRequest, tmp: Path) -> dict:
    """Build with onnxruntime-genai's builder; for ``genai_gguf_exact`` swap in GGUF blocks."""
    import onnx

    from rkpipe.backends.ort import genai

    cfg = request.quant.ort
    python = genai.genai_python(cfg.genai_python)
    facts: dict[str, Any] = {}
    gguf = get_scheme(scheme).gguf
    if gguf:  # fail on a non-GGUF source before building
        from rkpipe.backends.ort.gguf_exact import gguf_path_from_manifest

        gguf_path = gguf_path_from_manifest(request.float_model_dir)
    precision = get_scheme(scheme).builder_precision or "fp32"
    work = tmp / ".genai_build"
    built, facts["builder_s"] = genai.build_genai(
        python, request.float_model_dir, work, precision, cfg.block_size, cfg.accuracy_level
    )
    model = onnx.load(str(built / ONNX_MODEL_FILE), load_external_data=True)
    if gguf:
        from rkpipe.backends.ort.gguf_exact import apply_gguf_exact, load_gguf_weights

        report = apply_gguf_exact(
            model,
            load_gguf_weights(gguf_path),
            cfg.accuracy_level,
            cfg.accuracy_level_8bit,
            cfg.q4_1_mode,
            cfg.embedding_bits,
        )
        facts.update(report.as_dict(), gguf_file=gguf_path.name)
    facts.update(_split_decode(model, cfg))
    _save(model, tmp / ONNX_MODEL_FILE)
    for name in ("genai_config.json",):
        if (built / name).is_file():
            shutil.copy2(built / name, tmp / name)
    shutil.move(str(work / genai.BUILDER_LOG), str(tmp / genai.BUILDER_LOG))
    shutil.rmtree(work, ignore_errors=True)
    return facts


def _split_decode(model: Any, cfg: OrtQuantConfig) -> dict[str, int]:
    """Give one-token steps their own 4-bit accuracy level (``decode_accuracy_level``)."""
    if cfg.decode_accuracy_level is None:
        return {}
    from rkpipe.backends.ort.nbits import split_decode_branch

    return {"decode_branch_matmuls": split_decode_branch(model, cfg.decode_accuracy_level)}


def _save(model: Any, dst: Path) -> None:
    """Save ``model`` as one file, or with ``model.onnx.data`` beside it past 2 GB."""
    import onnx

    if model.ByteSize() > PROTOBUF_LIMIT:
        onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save(model, str(dst))


@contextlib.contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    """Silence the quantizers' per-node INFO logs (thousands of lines, some on the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _quantize_int8(source: Any, dst: Path, cfg: OrtQuantConfig, large: bool, scheme: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        dst,
        op_types_to_quantize=list(cfg.op_types),
        per_channel=cfg.per_channel,
        reduce_range=resolve_reduce_range(cfg, scheme)[0],
        weight_type=QuantType[cfg.weight_type],
        use_external_data_format=large,
    )


def _quantize_nbits(source: Any, dst: Path, cfg: OrtQuantConfig, large: bool, bits: int) -> None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise BackendError(
            f"onnxruntime {bits}-bit quantization: cannot import MatMulNBitsQuantizer ({exc}); "
            "install onnx-ir: pip install onnx-ir==1.1.0"
        ) from exc
    quantizer = MatMulNBitsQuantizer(
        str(source) if isinstance(source, Path) else source,
        bits=bits,
        block_size=cfg.block_size,
        is_symmetric=INT4_SYMMETRIC,
        accuracy_level=cfg.accuracy_level or None,
        op_types_to_quantize=tuple(cfg.op_types),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


def fold_weight_transposes(model: Any) -> int:
    """Replace ``Transpose(initializer)`` nodes feeding only MatMul B inputs by initializers.

    ``model`` (an ``onnx.ModelProto`` with its data loaded) is changed in place; the
    transposed copy is named after the Transpose output. Returns how many were folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, pos))
    folds = [n for n in graph.node if _is_weight_transpose(n, inits, consumers)]
    for node in folds:
        array = numpy_helper.to_array(inits[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        graph.initializer.append(numpy_helper.from_array(array.transpose(perm), node.output[0]))
        graph.node.remove(node)
    return len(folds)


def _is_weight_transpose(node: Any, inits: dict[str, Any], consumers: dict[str, list]) -> bool:
    if node.op_type != "Transpose" or node.input[0] not in inits:
        return False
    uses = consumers.get(node.output[0], [])
    return bool(uses) and all(op == "MatMul" and pos == 1 for op, pos in uses)


def count_ops(model_path: Path) -> dict[str, int]:
    """Counts of quantized vs float MatMul nodes in the ONNX graph at ``model_path``.

    Keys: ``quantized_matmul_count`` (MatMulInteger + MatMulNBits + QDQ-quantized MatMul),
    ``matmul_integer_count``, ``matmul_nbits_count``, ``dynamic_quantize_count``,
    ``qdq_matmul_count`` (MatMul fed by a DequantizeLinear weight), ``gather_quantized_count``
    (GatherBlockQuantized), ``float_matmul_count`` (every remaining MatMul, activations x
    activations and residual branches included), ``float_weight_matmul_count`` (remaining
    MatMul whose B is a float weight, the exact-GGUF residual branches excluded),
    ``residual_matmul_count`` (those branches), ``attention_fused_count``
    (GroupQueryAttention) and ``node_count``.
    """
    import onnx

    from rkpipe.backends.ort.nbits import branch_nodes

    graph = onnx.load(str(model_path), load_external_data=False).graph
    nodes = branch_nodes(graph)  # a decode/prefill split: the prefill branch
    ops = Counter(n.op_type for n in nodes)
    weights = {t.name for t in graph.initializer}
    weights |= {
        o for n in nodes if n.op_type == "Transpose" and n.input[0] in weights for o in n.output
    }
    dequantized = {
        o
        for n in nodes
        if n.op_type == "DequantizeLinear" and n.input[0] in weights
        for o in n.output
    }
    weight_mms = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in weights]
    residual = sum(1 for n in weight_mms if n.name.endswith(RESIDUAL_SUFFIXES))
    qdq = sum(1 for n in nodes if n.op_type == "MatMul" and n.input[1] in dequantized)
    return {
        "quantized_matmul_count": ops["MatMulInteger"] + ops["MatMulNBits"] + qdq,
        "matmul_integer_count": ops["MatMulInteger"],
        "matmul_nbits_count": ops["MatMulNBits"],
        "dynamic_quantize_count": ops["DynamicQuantizeLinear"],
        "qdq_matmul_count": qdq,
        "gather_quantized_count": ops["GatherBlockQuantized"],
        "float_matmul_count": ops["MatMul"],
        "float_weight_matmul_count": len(weight_mms) - residual,
        "residual_matmul_count": residual,
        "attention_fused_count": ops["GroupQueryAttention"],
        "node_count": len(nodes),
    }


def _params(request: QuantizeRequest, scheme: str, facts: dict[str, Any]) -> dict[str, str]:
    """The settings of this run as MLflow params (strings)."""
    q, cfg = request.quant, request.quant.ort
    params = {
        "backend": "onnxruntime",
        "dtype": q.dtype,
        "platform": request.platform,
        "scheme": scheme,
        "op_types": ",".join(cfg.op_types),
        "embedding_bits": str(cfg.embedding_bits),
        "folded_weight_transposes": str(facts.get("folded_weight_transposes", 0)),
    }
    if scheme in ("dynamic", "static_qdq"):
        reduce_range, why = resolve_reduce_range(cfg, scheme)
        params.update(weight_type=cfg.weight_type, per_channel=str(cfg.per_channel),
                      reduce_range=str(reduce_range), reduce_range_reason=why)  # fmt: skip
    if scheme == "static_qdq":
        params.update(
            activation_type=cfg.activation_type,
            calibrate_method=cfg.calibrate_method,
            calib_records=str(cfg.calib_records),
            calib_max_tokens=str(cfg.calib_max_tokens),
        )
    if scheme in ("matmul_nbits", "genai_int4", "genai_int8"):
        params.update(
            bits="8" if q.dtype == "int8" else "4",
            block_size=str(cfg.block_size),
            symmetric=str(INT4_SYMMETRIC),
        )
    info = get_scheme(scheme)
    if info.gguf:
        params.update(
            gguf_file=str(facts.get("gguf_file", "")),
            block_size=str(info.block_size(cfg.block_size)),
            q4_1_mode=cfg.q4_1_mode,
        )
    if scheme not in ("dynamic", "static_qdq"):
        params["accuracy_level"] = str(cfg.accuracy_level)
    if info.gguf or cfg.embedding_bits == 8:
        params["accuracy_level_8bit"] = str(cfg.accuracy_level_8bit)
    if cfg.decode_accuracy_level is not None and "decode_branch_matmuls" in facts:
        params["decode_accuracy_level"] = str(cfg.decode_accuracy_level)
    return params


def _manifest(
    quant: QuantConfig, params: dict[str, str], counts: dict[str, int], facts: dict[str, Any]
) -> dict:
    """The params with their natural JSON types, the scheme's facts and the node counts."""
    manifest: dict[str, Any] = {**params, "op_types": list(quant.ort.op_types), "counts": counts}
    manifest["folded_weight_transposes"] = int(params["folded_weight_transposes"])
    manifest["embedding_bits"] = quant.ort.embedding_bits
    for key in ("per_channel", "symmetric", "reduce_range"):
        if key in params:
            manifest[key] = params[key] == "True"
    for key in (
        "bits",
        "block_size",
        "accuracy_level",
        "accuracy_level_8bit",
        "decode_accuracy_level",
        "calib_records",
        "calib_max_tokens",
    ):
        if key in params:
            manifest[key] = int(params[key])
    # Timings (the genai builder's builder_s) are metrics: an artifact holds none.
    manifest["facts"] = {k: v for k, v in facts.items() if not k.endswith("_s")}
    return manifest
