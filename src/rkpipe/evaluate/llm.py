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

The float model's side is computed once per model and evaluation text (the
``reference_logits`` DVC stage) and stored as a :class:`Reference`: the windows, the exact
target log-probabilities and argmax, and the full log-probabilities in float16 for the KL
divergence (116 MB for SmolLM2 on the default text instead of 231 MB in float32; the float16
rounding moves KL by about 1e-5 nats, measured on the default model, and leaves PPL and top-1
untouched because those come from the exact arrays).
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
        """Add rows of full reference and candidate logits."""
        for lo in range(0, len(targets), ROW_CHUNK):
            rows = slice(lo, lo + ROW_CHUNK)
            logp, t = log_softmax(ref[rows]), targets[rows]
            target_logp = logp[np.arange(len(t)), t]
            self.add_rows(logp, target_logp, logp.argmax(axis=-1), cand[rows], t)

    def add_rows(
        self,
        logp: np.ndarray,
        target_logp: np.ndarray,
        top1: np.ndarray,
        cand: np.ndarray,
        targets: np.ndarray,
    ) -> None:
        """Add one chunk: the reference's log-probs (for KL), its exact target log-probs and
        argmax, and the candidate's logits."""
        logq = log_softmax(cand)
        self.nll_ref -= float(np.sum(target_logp))
        self.nll_cand -= float(logq[np.arange(len(targets)), targets].sum())
        self.kld += float(_kl_from_logp(logp, logq).sum())
        self.agree += int((logq.argmax(axis=-1) == top1).sum())
        self.count += len(targets)

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
    from rkpipe.progress import track

    sums = _Sums()
    pairs = zip(reference, windows, strict=True)
    for ref_logits, window in track(pairs, f"scoring {label} windows", total=len(windows)):
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


@dataclass
class Reference:
    """The float model's side of the evaluation, over the predicted positions of each window.

    ``logp``: per window ``[len - 1, vocab]`` float16 log-probabilities (for KL);
    ``target_logp``: float64 ``[positions]`` log-probability of each next token (for PPL);
    ``top1``: int64 ``[positions]`` argmax of the float32 logits (for top-1 agreement).
    """

    windows: list[list[int]]
    logp: list[np.ndarray]
    target_logp: np.ndarray
    top1: np.ndarray

    @property
    def positions(self) -> int:
        """Number of predicted positions."""
        return len(self.target_logp)


def build_reference(
    logits_fn: Callable[[list[int]], np.ndarray], windows: Sequence[Sequence[int]]
) -> Reference:
    """Run the float model once over ``windows`` and keep what scoring needs."""
    logps, target_logp, top1 = [], [], []
    for window in windows:
        logits = np.asarray(logits_fn(list(window)), dtype=np.float32)[:-1]
        targets = np.asarray(window[1:], dtype=np.int64)
        for lo in range(0, len(targets), ROW_CHUNK):
            logp = log_softmax(logits[lo : lo + ROW_CHUNK])
            target_logp.append(logp[np.arange(len(logp)), targets[lo : lo + ROW_CHUNK]])
            top1.append(logp.argmax(axis=-1))
            logps.append(logp.astype(np.float16))
    return Reference(
        windows=[list(map(int, w)) for w in windows],
        logp=_split_rows(np.concatenate(logps), windows),
        target_logp=np.concatenate(target_logp),
        top1=np.concatenate(top1).astype(np.int64),
    )


def _split_rows(rows: np.ndarray, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    bounds = np.cumsum([len(w) - 1 for w in windows])[:-1]
    return list(np.split(rows, bounds))


def save_reference(reference: Reference, path: Path) -> None:
    """Write ``reference`` to ``path`` (``.npz``) atomically."""
    from rkpipe.io import atomic_path

    lengths = np.array([len(w) for w in reference.windows], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            window_lengths=lengths,
            ids=np.concatenate([np.asarray(w, dtype=np.int64) for w in reference.windows]),
            logp=np.concatenate(reference.logp),
            target_logp=reference.target_logp,
            top1=reference.top1,
        )


def load_reference(path: Path) -> Reference:
    """Read a :func:`save_reference` file.

    Raises:
        BackendError: the file is missing or is not a reference file.
    """
    try:
        with np.load(path) as data:
            lengths = data["window_lengths"]
            windows = [w.tolist() for w in np.split(data["ids"], np.cumsum(lengths)[:-1])]
            return Reference(windows, _split_rows(data["logp"], windows),
                             data["target_logp"], data["top1"])  # fmt: skip
    except (OSError, KeyError, ValueError) as exc:
        raise BackendError(
            f"evaluate: cannot read the reference logits {path}: {exc}; "
            "run the reference_logits stage (dvc repro reference_logits)"
        ) from exc


def score_reference(
    reference: Reference, logits_fn: Callable[[list[int]], np.ndarray], label: str = "candidate"
) -> dict[str, float]:
    """PPL / KLD / top-1 of ``logits_fn`` against a stored :class:`Reference`.

    Returns the keys of the module docstring plus ``eval_windows``.

    Raises:
        BackendError: the candidate's logits do not match the reference's shape.
    """
    sums, row = _Sums(), 0
    for ref_logp, window in zip(reference.logp, reference.windows, strict=True):
        cand = np.asarray(logits_fn(list(window)), dtype=np.float32)[:-1]
        if cand.shape != ref_logp.shape:
            raise BackendError(
                f"evaluate: logits shapes differ, {ref_logp.shape} (reference) vs "
                f"{cand.shape} ({label}); compare variants of one model"
            )
        targets = np.asarray(window[1:], dtype=np.int64)
        for lo in range(0, len(targets), ROW_CHUNK):
            hi = min(lo + ROW_CHUNK, len(targets))
            rows, ref_rows = slice(lo, hi), slice(row + lo, row + hi)  # window / whole text
            logp = log_softmax(ref_logp[rows].astype(np.float64))
            sums.add_rows(logp, reference.target_logp[ref_rows], reference.top1[ref_rows],
                          cand[rows], targets[rows])  # fmt: skip
        row += len(targets)
    metrics = sums.metrics()
    metrics["eval_windows"] = float(len(reference.windows))
    return metrics


def write_reference(
    model_dir: Path, text: str, tokenizer_dir: Path, seqlen: int, threads: int, out: Path
) -> dict[str, float]:
    """The ``reference_logits`` stage: score the float ONNX export once and save it to ``out``.

    Returns ``reference_ppl``, ``reference_tokens``, ``reference_windows`` and ``reference_s``
    (named apart from evaluate's ``ppl_float``/``eval_tokens``: one name per metrics file).
    """
    start = time.perf_counter()
    windows = eval_windows(text, tokenizer_dir, seqlen)
    reference = build_reference(load_onnx_llm(model_dir, threads).logits, windows)
    save_reference(reference, out)
    return {
        "reference_ppl": math.exp(-float(reference.target_logp.sum()) / reference.positions),
        "reference_tokens": float(reference.positions),
        "reference_windows": float(len(windows)),
        "reference_s": time.perf_counter() - start,
    }


def evaluate_against_reference(
    reference_file: Path, candidate_dir: Path, threads: int = 2
) -> dict[str, float]:
    """Score the candidate ONNX LLM in ``candidate_dir`` against a stored reference."""
    start = time.perf_counter()
    reference = load_reference(reference_file)
    metrics = score_reference(reference, load_onnx_llm(candidate_dir, threads).logits,
                              label=str(candidate_dir))  # fmt: skip
    metrics["eval_s"] = time.perf_counter() - start
    log.info("evaluate %s vs %s: %s", candidate_dir, reference_file, metrics)
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
