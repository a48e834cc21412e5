"""Host accuracy of a quantized LLM against its float reference, both as ONNX graphs.

On non-overlapping windows of ``seqlen`` tokens, position ``t`` of a window predicts
token ``t+1``; every metric is computed over those predicted positions:

* ``ppl_float`` / ``ppl``: perplexity of the reference / candidate, exp(mean NLL);
* ``ppl_delta_pct``: 100 * (ppl - ppl_float) / ppl_float;
* ``kld_mean``: mean over positions of KL(p_float || p_quant) in nats;
* ``top1_agreement``: fraction of positions where both models' argmax agree;
* ``eval_tokens``: number of predicted positions.

The pure helpers (:func:`log_softmax`, :func:`perplexity`, :func:`kl_divergence`,
:func:`top1_agreement`) work in float64 on ``[N, vocab]`` logits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rkpipe.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

MIN_WINDOW_TOKENS = 16
ROW_CHUNK = 128  # rows of [seqlen, vocab] converted to float64 at a time


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """Negative log-likelihood of ``targets[i]`` under ``logits[i]`` (``[N, V]`` -> ``[N]``)."""
    logp = log_softmax(logits)
    idx = np.asarray(targets, dtype=np.int64)
    return -logp[np.arange(len(idx)), idx]


def perplexity(logits: np.ndarray, targets: Sequence[int] | np.ndarray) -> float:
    """exp(mean NLL) of ``targets`` ([N] ids) under ``logits`` ([N, vocab]).

    Raises:
        ValueError: the number of rows and targets differ, or there are none.
    """
    if len(targets) == 0 or len(logits) != len(targets):
        raise ValueError(f"perplexity: got {len(logits)} logit rows for {len(targets)} targets")
    return math.exp(float(nll(logits, targets).mean()))


def kl_divergence(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """Per-row KL(p_ref || p_cand) in nats, ``[N, V]`` x ``[N, V]`` -> ``[N]``."""
    return _kl_from_logp(log_softmax(ref_logits), log_softmax(cand_logits))


def _kl_from_logp(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    return (np.exp(logp) * (logp - logq)).sum(axis=-1)


def top1_agreement(ref_logits: np.ndarray, cand_logits: np.ndarray) -> float:
    """Fraction of rows where the argmax of both logits is the same token."""
    ref, cand = np.asarray(ref_logits), np.asarray(cand_logits)
    return float((ref.argmax(axis=-1) == cand.argmax(axis=-1)).mean())


def token_windows(ids: Sequence[int], seqlen: int, min_tokens: int = MIN_WINDOW_TOKENS) -> list:
    """Split ``ids`` into consecutive non-overlapping windows of ``seqlen`` tokens.

    The last, shorter window is kept only if it has at least ``min_tokens`` tokens.
    """
    windows = [list(ids[i : i + seqlen]) for i in range(0, len(ids), seqlen)]
    if windows and len(windows[-1]) < min(min_tokens, seqlen):
        windows.pop()
    return windows


@dataclass
class _Sums:
    """Running totals over predicted positions."""

    nll_ref: float = 0.0
    nll_cand: float = 0.0
    kld: float = 0.0
    agree: int = 0
    count: int = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> None:
        for lo in range(0, len(targets), ROW_CHUNK):
            rows = slice(lo, lo + ROW_CHUNK)
            logp, logq, t = log_softmax(ref[rows]), log_softmax(cand[rows]), targets[rows]
            picked = np.arange(len(t))
            self.nll_ref -= float(logp[picked, t].sum())
            self.nll_cand -= float(logq[picked, t].sum())
            self.kld += float(_kl_from_logp(logp, logq).sum())
            self.agree += int((logp.argmax(axis=-1) == logq.argmax(axis=-1)).sum())
            self.count += len(t)

    def metrics(self) -> dict[str, float]:
        ppl_float = math.exp(self.nll_ref / self.count)
        ppl = math.exp(self.nll_cand / self.count)
        return {
            "ppl_float": ppl_float,
            "ppl": ppl,
            "ppl_delta_pct": 100.0 * (ppl - ppl_float) / ppl_float,
            "kld_mean": self.kld / self.count,
            "top1_agreement": self.agree / self.count,
            "eval_tokens": float(self.count),
        }


def eval_windows(text: str, tokenizer_dir: Path, seqlen: int) -> list[list[int]]:
    """Token windows of ``text`` (tokenizer in ``tokenizer_dir``, no BOS) for the evaluation.

    Raises:
        ConfigError: ``seqlen`` < 2 or the text is shorter than one usable window.
    """
    if seqlen < 2:
        raise ConfigError(f"eval.seqlen={seqlen} is too small; expected >= 2")
    windows = token_windows(_tokenize(text, tokenizer_dir), seqlen)
    if not windows:
        raise ConfigError(
            f"eval text has too few tokens for a window (need >= {MIN_WINDOW_TOKENS}); "
            "point eval.text_file at a longer text"
        )
    return windows


def reference_logits(
    logits_fn: Callable[[list[int]], np.ndarray], windows: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """The reference's logits ``[len(window), vocab]`` for every window, computed once so that
    many candidates can be scored against them with :func:`score_logits`."""
    return [np.asarray(logits_fn(list(w)), dtype=np.float32) for w in windows]


def score_logits(
    reference: Sequence[np.ndarray],
    windows: Sequence[Sequence[int]],
    logits_fn: Callable[[list[int]], np.ndarray],
    label: str = "candidate",
) -> dict[str, float]:
    """PPL / KLD / top-1 of ``logits_fn`` (any backend: ONNX, llama.cpp ...) vs ``reference``.

    Returns the keys of the module docstring plus ``eval_windows``.

    Raises:
        BackendError: a candidate's logits have another shape than the reference's.
    """
    sums = _Sums()
    for ref_logits, window in zip(reference, windows, strict=True):
        cand_logits = np.asarray(logits_fn(list(window)), dtype=np.float32)
        if ref_logits.shape != cand_logits.shape:
            raise BackendError(
                f"evaluate: logits shapes differ, {ref_logits.shape} (reference) vs "
                f"{cand_logits.shape} ({label}); compare variants of one model"
            )
        targets = np.asarray(window[1:], dtype=np.int64)
        sums.add(ref_logits[:-1], cand_logits[:-1], targets)
    metrics = sums.metrics()
    metrics["eval_windows"] = float(len(windows))
    return metrics


def evaluate_llm(
    reference_dir: Path,
    candidate_dir: Path,
    text: str,
    tokenizer_dir: Path,
    seqlen: int = 512,
    threads: int = 2,
) -> dict[str, float]:
    """Compare the candidate ONNX LLM with the reference on ``text``.

    Args:
        reference_dir: directory of the float ONNX export (``model.onnx``).
        candidate_dir: directory of the quantized ONNX model (an optimum export or an
            onnxruntime-genai builder graph).
        text: evaluation text, tokenized with the tokenizer in ``tokenizer_dir`` (no BOS).
        tokenizer_dir: a Hugging Face tokenizer directory.
        seqlen: window length in tokens.
        threads: onnxruntime intra-op threads.

    Returns:
        ``ppl_float``, ``ppl``, ``ppl_delta_pct``, ``kld_mean``, ``top1_agreement``,
        ``eval_tokens``, ``eval_windows`` and ``eval_s`` (see the module docstring).

    Raises:
        ConfigError: ``seqlen`` < 2 or the text is shorter than one usable window.
        BackendError: a model cannot be loaded or the two vocabularies differ.
    """
    start = time.perf_counter()
    windows = eval_windows(text, tokenizer_dir, seqlen)
    ref, cand = load_onnx_llm(reference_dir, threads), load_onnx_llm(candidate_dir, threads)
    reference = reference_logits(ref.logits, windows)
    del ref
    metrics = score_logits(reference, windows, cand.logits, label=str(candidate_dir))
    metrics["eval_s"] = time.perf_counter() - start
    log.info("evaluate %s vs %s: %s", candidate_dir, reference_dir, metrics)
    return metrics


def _tokenize(text: str, tokenizer_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def load_onnx_llm(model_dir: Path, threads: int) -> Any:
    """:class:`~rkpipe.engines.ort_llm.OrtCausalLM` on ``model_dir``.

    Raises:
        BackendError: the directory has no loadable ONNX LLM.
    """
    from rkpipe.engines.ort_llm import OrtCausalLM

    try:
        return OrtCausalLM(str(model_dir), threads=threads)
    except (OSError, ValueError) as exc:
        raise BackendError(f"evaluate: cannot load the ONNX LLM in {model_dir}: {exc}") from exc
