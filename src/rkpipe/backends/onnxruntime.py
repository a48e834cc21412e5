"""onnxruntime backend: weight quantization of the fp32 ONNX export.

* ``int8``: ``quantize_dynamic`` (MatMul -> DynamicQuantizeLinear + MatMulInteger) on
  ``quant.ort.op_types`` with ``weight_type`` and ``per_channel`` from ``quant.ort``.
* ``int4``: ``MatMulNBitsQuantizer`` (MatMul -> MatMulNBits, block-wise, symmetric) with
  ``block_size`` and ``accuracy_level`` from ``quant.ort``.

Before either, weights reached through a ``Transpose`` of an initializer (optimum's tied
``lm_head``: ``MatMul(x, Transpose(embed_tokens))``) are folded into a transposed copy,
so that the quantizers, which only see initializer B inputs, also quantize the lm_head
instead of leaving the largest MatMul in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rkpipe.backends import register
from rkpipe.backends.base import PeakRss, QuantizeRequest, QuantizeResult
from rkpipe.config.schema import OrtQuantConfig, QuantConfig
from rkpipe.errors import BackendError, ConfigError
from rkpipe.io import atomic_path, dir_size_mb, write_json_atomic
from rkpipe.llm.export import ONNX_MODEL_FILE, copy_inference_files

log = logging.getLogger(__name__)

MANIFEST_FILE = "quant_manifest.json"
DTYPES = ("int8", "int4")
WEIGHT_TYPES = ("QInt8", "QUInt8")
INT8_SCHEMES = ("dynamic",)
PROTOBUF_LIMIT = 2_000_000_000  # bytes; larger models need external data
INT4_SYMMETRIC = True


@register("onnxruntime")
class OnnxruntimeBackend:
    """Quantize an optimum fp32 ONNX export with onnxruntime's quantization tools."""

    name = "onnxruntime"

    def quantize(self, request: QuantizeRequest) -> QuantizeResult:
        """Quantize ``request.onnx_fp32_dir/model.onnx`` into ``request.out_dir``.

        The output holds ``model.onnx`` (+ ``model.onnx.data`` past 2 GB), the config and
        tokenizer files of the fp32 directory, and ``quant_manifest.json``.

        Raises:
            ConfigError: unsupported ``quant.dtype``, ``quant.ort.scheme`` or weight type.
            BackendError: no fp32 ONNX model, or onnxruntime's quantizer failed.
        """
        _check_config(request.quant)
        src = _fp32_model(request)
        with atomic_path(request.out_dir) as tmp, PeakRss() as rss:
            tmp.mkdir()
            start = time.perf_counter()
            folded = _quantize(src, tmp / ONNX_MODEL_FILE, request.quant)
            quantize_s = time.perf_counter() - start
            copy_inference_files(src.parent, tmp)
            counts = count_ops(tmp / ONNX_MODEL_FILE)
            params = _params(request, folded)
            write_json_atomic(tmp / MANIFEST_FILE, _manifest(request.quant, params, counts))
            size_mb = dir_size_mb(tmp)
        metrics = {
            "size_mb": round(size_mb, 3),
            "fp32_size_mb": round(dir_size_mb(src.parent), 3),
            "quantize_s": round(quantize_s, 3),
            "quantize_peak_rss_mb": round(rss.peak_mb, 1),
            **{k: float(v) for k, v in counts.items()},
        }
        log.info("onnxruntime %s: %s", request.quant.dtype, metrics)
        out = Path(request.out_dir)
        return QuantizeResult(out / ONNX_MODEL_FILE, out, metrics, params)


def _check_config(quant: QuantConfig) -> None:
    ort_cfg = quant.ort
    if quant.dtype not in DTYPES:
        raise ConfigError(
            f"quant.dtype={quant.dtype!r} is not supported by quant.backend=onnxruntime; "
            f"allowed: {', '.join(DTYPES)}"
        )
    if quant.dtype == "int8" and ort_cfg.scheme not in INT8_SCHEMES:
        raise ConfigError(
            f"quant.ort.scheme={ort_cfg.scheme!r} is not supported for int8; "
            f"allowed: {', '.join(INT8_SCHEMES)}"
        )
    if quant.dtype == "int8" and ort_cfg.weight_type not in WEIGHT_TYPES:
        raise ConfigError(
            f"quant.ort.weight_type={ort_cfg.weight_type!r} is not allowed; "
            f"allowed: {', '.join(WEIGHT_TYPES)}"
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


def _quantize(src: Path, dst: Path, quant: QuantConfig) -> int:
    """Fold weight transposes, quantize, save to ``dst``; return the number of folds."""
    import onnx

    large = dir_size_mb(src) * 1e6 > PROTOBUF_LIMIT
    model = onnx.load(str(src), load_external_data=True)
    folded = fold_weight_transposes(model)
    with tempfile.TemporaryDirectory(prefix=".prep.", dir=dst.parent.parent) as work:
        source: Any = model
        if large:  # a >2 GB ModelProto cannot be serialised: hand the quantizer a file
            source = Path(work) / "prepared.onnx"
            onnx.save(model, str(source), save_as_external_data=True, location="prepared.data")
        del model
        try:
            with _quiet_quantizer_logs():
                if quant.dtype == "int8":
                    _quantize_int8(source, dst, quant.ort, large)
                else:
                    _quantize_int4(source, dst, quant.ort, large)
        except (ConfigError, BackendError):
            raise
        except Exception as exc:  # the quantizers raise assorted types
            raise BackendError(
                f"onnxruntime {quant.dtype} quantization of {src} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return folded


@contextlib.contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    """Silence the quantizers' per-node INFO logs (thousands of lines, some on the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def _quantize_int8(source: Any, dst: Path, cfg: OrtQuantConfig, large: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        dst,
        op_types_to_quantize=list(cfg.op_types),
        per_channel=cfg.per_channel,
        weight_type=QuantType[cfg.weight_type],
        use_external_data_format=large,
    )


def _quantize_int4(source: Any, dst: Path, cfg: OrtQuantConfig, large: bool) -> None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise BackendError(
            f"onnxruntime int4 quantization: cannot import MatMulNBitsQuantizer ({exc}); "
            "install onnx-ir: pip install onnx-ir==1.1.0"
        ) from exc
    quantizer = MatMulNBitsQuantizer(
        str(source) if isinstance(source, Path) else source,
        bits=4,
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

    Keys: ``quantized_matmul_count`` (MatMulInteger + MatMulNBits),
    ``matmul_integer_count``, ``matmul_nbits_count``, ``dynamic_quantize_count``,
    ``float_matmul_count`` (every remaining MatMul, activations x activations included),
    ``float_weight_matmul_count`` (remaining MatMul whose B is a weight), ``node_count``.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    ops = Counter(n.op_type for n in graph.node)
    weights = {t.name for t in graph.initializer}
    weights |= {
        o
        for n in graph.node
        if n.op_type == "Transpose" and n.input[0] in weights
        for o in n.output
    }
    weight_mm = sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    return {
        "quantized_matmul_count": ops["MatMulInteger"] + ops["MatMulNBits"],
        "matmul_integer_count": ops["MatMulInteger"],
        "matmul_nbits_count": ops["MatMulNBits"],
        "dynamic_quantize_count": ops["DynamicQuantizeLinear"],
        "float_matmul_count": ops["MatMul"],
        "float_weight_matmul_count": weight_mm,
        "node_count": len(graph.node),
    }


def _params(request: QuantizeRequest, folded: int) -> dict[str, str]:
    q, cfg = request.quant, request.quant.ort
    params = {
        "backend": "onnxruntime",
        "dtype": q.dtype,
        "platform": request.platform,
        "op_types": ",".join(cfg.op_types),
        "folded_weight_transposes": str(folded),
    }
    if q.dtype == "int8":
        params.update(
            scheme=cfg.scheme, weight_type=cfg.weight_type, per_channel=str(cfg.per_channel)
        )
    else:
        params.update(
            scheme="weight_only_rtn",
            bits="4",
            block_size=str(cfg.block_size),
            accuracy_level=str(cfg.accuracy_level),
            symmetric=str(INT4_SYMMETRIC),
        )
    return params


def _manifest(quant: QuantConfig, params: dict[str, str], counts: dict[str, int]) -> dict:
    """The params with their natural JSON types, plus the node counts."""
    manifest: dict[str, Any] = {**params, "op_types": list(quant.ort.op_types), "counts": counts}
    manifest["folded_weight_transposes"] = int(params["folded_weight_transposes"])
    if quant.dtype == "int8":
        manifest["per_channel"] = bool(quant.ort.per_channel)
    else:
        manifest.update(bits=4, block_size=quant.ort.block_size, symmetric=INT4_SYMMETRIC)
        manifest["accuracy_level"] = quant.ort.accuracy_level
    return manifest
