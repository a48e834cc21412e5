"""onnxruntime backend: quantize the fp32 ONNX export with a scheme (``quant.ort.scheme``).

The schemes are the modules of :mod:`rkpipe.backends.ort.schemes`, one each (dynamic int8,
static QDQ, MatMulNBits, GGUF-exact, the genai builder ones). This module checks the config,
runs the scheme in an atomic output directory, counts the graph's nodes and writes
``quant_manifest.json``: the scheme's params with their JSON types, its facts and the counts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rkpipe.backends import register
from rkpipe.backends.base import QuantizeRequest, QuantizeResult
from rkpipe.backends.ort.graph import count_ops
from rkpipe.backends.ort.schemes import EMBEDDING_BITS, Q4_1_MODES, OrtScheme, SchemeJob, get_scheme
from rkpipe.config.schema import QuantConfig
from rkpipe.errors import BackendError, ConfigError
from rkpipe.io import atomic_path, dir_size_mb, write_json_atomic
from rkpipe.llm.export import ONNX_MODEL_FILE, copy_inference_files
from rkpipe.measure.memory import PeakRss
from rkpipe.quant_manifest import MANIFEST_FILE, RunWith

log = logging.getLogger(__name__)

DTYPES = ("int8", "int4")
WEIGHT_TYPES = ("QInt8", "QUInt8")
# onnxruntime runs the directory here and on a board, through the same engine.
RUN_WITH = RunWith(runtime="onnxruntime", runner="ort_llm", model=".", host_evaluable=True)


@register("onnxruntime")
class OnnxruntimeBackend:
    """Quantize an LLM for onnxruntime with one of the registered schemes."""

    name = "onnxruntime"

    def quantize(self, request: QuantizeRequest) -> QuantizeResult:
        """Quantize into ``request.out_dir``.

        The output holds ``model.onnx`` (+ external data past 2 GB), the config and tokenizer
        files of the float model, ``quant_manifest.json`` and whatever the scheme adds (the
        genai schemes: ``genai_config.json`` and ``genai_builder.log``).

        Raises:
            ConfigError: unsupported ``quant.dtype``, scheme, weight type or model source.
            BackendError: a missing input (fp32 export, GGUF, calibration set), or the
                quantizer / builder failed; nothing is left in ``out_dir``.
        """
        _check_config(request.quant)
        scheme = effective_scheme(request.quant)
        src = _fp32_model(request) if scheme.needs_export else None
        with atomic_path(request.out_dir) as tmp, PeakRss() as rss:
            tmp.mkdir()
            start = time.perf_counter()
            facts = _run(scheme, SchemeJob(request, src, tmp))
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
        log.info("onnxruntime %s %s: %s", scheme.name, request.quant.dtype, metrics)
        out = Path(request.out_dir)
        return QuantizeResult(out / ONNX_MODEL_FILE, out, metrics, params)


def effective_scheme(quant: QuantConfig) -> OrtScheme:
    """The scheme that runs (a legacy spelling, ``dynamic`` with ``dtype=int4``, aliases
    ``matmul_nbits``)."""
    return get_scheme(get_scheme(quant.ort.scheme).runs_as(quant.dtype))


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


def _run(scheme: OrtScheme, job: SchemeJob) -> dict[str, Any]:
    """Run ``scheme``; any failure of the quantizers becomes one BackendError line."""
    from rkpipe.progress import step

    try:
        with step(f"quantizing with onnxruntime {scheme.name} ({job.dtype})"):
            return scheme.run(job)
    except (ConfigError, BackendError):
        raise
    except Exception as exc:  # the quantizers raise assorted types
        raise BackendError(
            f"onnxruntime {scheme.name} ({job.dtype}) quantization failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _params(request: QuantizeRequest, scheme: OrtScheme, facts: dict[str, Any]) -> dict[str, str]:
    """The settings of this run as MLflow params (strings): the common ones and the scheme's."""
    q, cfg = request.quant, request.quant.ort
    params = {
        "backend": "onnxruntime",
        "dtype": q.dtype,
        "platform": request.platform,
        "scheme": scheme.name,
        "op_types": ",".join(cfg.op_types),
        "embedding_bits": str(cfg.embedding_bits),
        "folded_weight_transposes": str(facts.get("folded_weight_transposes", 0)),
        **scheme.params(cfg, q.dtype, facts),
    }
    if scheme.block:
        params["accuracy_level"] = str(cfg.accuracy_level)
    if scheme.gguf or cfg.embedding_bits == 8:
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
    manifest["run_with"] = RUN_WITH.as_dict()
    return manifest
