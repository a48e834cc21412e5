"""Host evaluation of one variant: the LLM against its float export, the ASR model against fp32."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rkpipe.errors import ConfigError

log = logging.getLogger(__name__)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"eval.text_file={str(path)!r} does not exist")
    return path.read_text(encoding="utf-8")


def reference_path(cfg: Any) -> Path:
    """Where the ``reference_logits`` stage keeps the float model's evaluation logits."""
    return Path(cfg.paths.data_dir) / "eval" / "reference_logits.npz"


def write_reference_logits(cfg: Any) -> dict[str, float]:
    """The ``reference_logits`` stage: the float ONNX export's logits on the evaluation text."""
    from rkpipe.evaluate.llm import write_reference

    llm = Path(cfg.paths.models_dir) / "llm"
    return write_reference(
        llm / "onnx_fp32",
        _read_text(Path(cfg.eval.text_file)),
        tokenizer_dir=llm / "float",
        seqlen=cfg.eval.seqlen,
        threads=cfg.eval.threads,
        out=reference_path(cfg),
    )


def evaluate_variant(cfg: Any) -> dict[str, float]:
    """PPL, KLD and top-1 agreement of the quantized LLM vs the fp32 ONNX export, and
    WER/CER/RTF of the quantized ASR model vs its fp32 export, as one flat metrics dict."""
    from rkpipe.asr.evaluate import evaluate_asr
    from rkpipe.evaluate.llm import evaluate_against_reference

    llm = Path(cfg.paths.models_dir) / "llm"
    asr = Path(cfg.paths.models_dir) / "asr"
    metrics: dict[str, Any] = {}
    if cfg.quant.backend == "onnxruntime":
        metrics |= evaluate_against_reference(
            reference_path(cfg), llm / "quantized", threads=cfg.eval.threads
        )
    else:
        log.info("host LLM evaluation skipped: backend %s has no host runtime", cfg.quant.backend)
    metrics |= evaluate_asr(
        fp32_dir=asr / "onnx_fp32",
        quant_dir=asr / "quantized",
        testset_dir=Path(cfg.paths.data_dir) / "asr" / "testset",
        tokenizer_dir=asr / "float",
        language=cfg.asr.language,
        task=cfg.asr.task,
        max_new_tokens=cfg.asr.max_new_tokens,
        threads=cfg.eval.threads,
    )
    metrics["asr_random_weights"] = float(cfg.asr.random_weights)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
