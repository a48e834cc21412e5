"""Host evaluation of one variant: the LLM against its float export, the ASR model against fp32."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.errors import ConfigError

if TYPE_CHECKING:
    from rkpipe.config.schema import PipelineConfig

log = logging.getLogger(__name__)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"eval.text_file={str(path)!r} does not exist")
    return path.read_text(encoding="utf-8")


def reference_path(cfg: PipelineConfig) -> Path:
    """Where the ``reference_logits`` stage keeps the float model's evaluation logits."""
    return cfg.layout.reference_logits


def write_reference_logits(cfg: PipelineConfig) -> dict[str, float]:
    """The ``reference_logits`` stage: the float ONNX export's logits on the evaluation text."""
    from rkpipe.evaluate.llm import write_reference

    llm = cfg.layout.llm
    return write_reference(
        llm.onnx_fp32,
        _read_text(Path(cfg.eval.text_file)),
        tokenizer_dir=llm.float,
        seqlen=cfg.eval.seqlen,
        threads=cfg.eval.threads,
        out=reference_path(cfg),
    )


def evaluate_variant(cfg: PipelineConfig) -> dict[str, Any]:
    """PPL, KLD and top-1 agreement of the quantized LLM vs the fp32 ONNX export, and
    WER/CER/RTF of the quantized ASR model vs its fp32 export, as one flat metrics dict, plus
    ``provenance`` (where and when they were measured, :func:`rkpipe.hostinfo.provenance`).

    Raises:
        BrokenVariantError: the LLM is numerically broken (:mod:`rkpipe.evaluate.sanity`) and
            ``eval.keep_broken`` is off; with it on, ``llm_broken`` is 1 instead.
        FingerprintError: the host fingerprint cannot be read.
    """
    from rkpipe.asr.evaluate import evaluate_asr
    from rkpipe.evaluate.llm import evaluate_against_reference
    from rkpipe.hostinfo import load_fingerprint, provenance
    from rkpipe.quant_manifest import run_with

    host = load_fingerprint(cfg.layout.host_fingerprint)
    llm, asr = cfg.layout.llm, cfg.layout.asr
    metrics: dict[str, Any] = {}
    if run_with(llm.quantized).host_evaluable:
        metrics |= evaluate_against_reference(
            reference_path(cfg), llm.quantized, threads=cfg.eval.threads
        )
        metrics |= _sanity(metrics, llm.quantized, host, cfg.eval.keep_broken)
    else:
        log.info("host LLM evaluation skipped: a %s model has no host runtime", cfg.quant.backend)
    metrics |= evaluate_asr(
        fp32_dir=asr.onnx_fp32,
        quant_dir=asr.quantized,
        testset_dir=cfg.layout.asr_testset,
        tokenizer_dir=asr.float,
        language=cfg.asr.language,
        task=cfg.asr.task,
        max_new_tokens=cfg.asr.max_new_tokens,
        threads=cfg.eval.threads,
    )
    metrics["asr_random_weights"] = float(cfg.asr.random_weights)
    figures = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return figures | {"provenance": provenance(host, board="host")}


def _sanity(
    metrics: dict[str, Any], quantized: Path, host: dict[str, Any], keep_broken: bool
) -> dict[str, float]:
    """``{"llm_broken": 0/1}``; raises BrokenVariantError for a broken LLM unless kept."""
    from rkpipe.evaluate.sanity import (
        BROKEN_METRIC,
        BrokenVariantError,
        broken_reasons,
        likely_cause,
        summarize,
    )  # fmt: skip
    from rkpipe.io import read_json

    reasons = broken_reasons(metrics)
    if not reasons:
        return {BROKEN_METRIC: 0.0}
    manifest_file = quantized / "quant_manifest.json"
    manifest = read_json(manifest_file) if manifest_file.is_file() else {}
    summary = summarize(metrics, reasons, likely_cause(manifest, host))
    if not keep_broken:
        raise BrokenVariantError(summary)
    log.warning("%s (kept: eval.keep_broken=true)", summary)
    return {BROKEN_METRIC: 1.0}
