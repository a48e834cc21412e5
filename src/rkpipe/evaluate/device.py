"""Accuracy of the variant on the board: PPL, KLD and top-1 agreement, as the host measures them.

The host's evaluation (:mod:`rkpipe.evaluate.llm`) runs the quantized model on the host's CPU;
an ``.rkllm`` model it cannot run at all. Here the board runs the variant on the same windows as
the host evaluation, against the float reference the ``reference_logits`` stage stored:

1. the host writes a request: the windows' token ids and, per predicted position, the ids of the
   reference's ``topk`` most likely tokens;
2. the board's runner (``ort_llm`` or ``rkllm_runner`` in logits mode) answers one row per
   window: the log-probability of each target token, its own argmax, the log-probabilities of the
   reference's top-k tokens and of all the other tokens together
   (:func:`rkpipe.engines.engine_shared.window_scores`); no full logits cross the link;
3. the host turns the rows into ``device_*`` figures beside the host's:

* ``device_ppl`` and ``device_ppl_delta_pct`` (vs the reference's ``ppl_float``): exact;
* ``device_top1_agreement``: the board's argmax against the reference's, exact;
* ``device_kld_mean``: KL(p_float || q_device) over the reference's top-k tokens plus one bucket
  for the rest. Merging tokens can only lower a KL divergence, so this is a lower bound of the
  full KLD, tight when the top-k hold nearly all the reference's mass (k=32 on SmolLM2 leaves a
  tail of a few per cent at most positions).

A failure on the board (a runtime without logits mode, NaN logits, a lost connection) does not
fail the stage: the figures are reported missing (``device_eval_missing``) with the reason.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rkpipe.engines.engine_shared import EVAL_ROW_KIND, split_mass
from rkpipe.errors import BackendError, BoardError
from rkpipe.evaluate.llm import ROW_CHUNK, Reference, load_reference

log = logging.getLogger(__name__)

MISSING = "device_eval_missing"  # 1.0 when the board gave no figures; the reason is a run tag
# The figures that have a host twin, and so go side by side in the report and the gates.
TWINNED = ("ppl", "ppl_delta_pct", "kld_mean", "top1_agreement")
ROW_KEYS = ("target_logp", "top1", "topk_logp", "rest_logp")  # engine_shared.window_scores


@dataclass
class ReferenceSide:
    """Per window: the ids of the float model's top-k tokens at each position ``[n, k]``, their
    log-probabilities ``[n, k]`` and the log-probability of all the other tokens ``[n]``."""

    ids: list[np.ndarray]
    topk_logp: list[np.ndarray]
    rest_logp: list[np.ndarray]


def reference_side(reference: Reference, topk: int) -> ReferenceSide:
    """The reference's top-k ids and masses, in chunks of rows (a window's float64 log-probs
    would be 200 MB for SmolLM2). Equal float16 values are told apart by a 1e-12 step per token
    id, far below their spacing, so the partition has no ties (ties made it 8x slower)."""
    k = min(topk, reference.logp[0].shape[-1])
    side = ReferenceSide([], [], [])
    for logp in reference.logp:
        ids, tops, rests = [], [], []
        for lo in range(0, len(logp), ROW_CHUNK):
            x = logp[lo : lo + ROW_CHUNK].astype(np.float64)  # renormalised by split_mass
            untied = x - np.arange(x.shape[-1]) * 1e-12
            chunk_ids = np.argpartition(untied, -k, axis=-1)[:, -k:]
            top, rest, _ = split_mass(x, chunk_ids)
            ids.append(chunk_ids)
            tops.append(top)
            rests.append(rest)
        side.ids.append(np.concatenate(ids))
        side.topk_logp.append(np.concatenate(tops))
        side.rest_logp.append(np.concatenate(rests))
    return side


def write_request(reference: Reference, side: ReferenceSide, path: Path) -> None:
    """The request file the runners read (``engine_shared.read_eval_request``), atomically."""
    from rkpipe.io import write_json_atomic

    request = {"windows": reference.windows, "ref_topk": [ids.tolist() for ids in side.ids]}
    write_json_atomic(path, request)


def score_rows(
    reference: Reference, side: ReferenceSide, rows: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """The ``device_*`` figures of the runner's rows against ``reference`` (see the module doc).

    Raises:
        BoardError: the rows do not answer every window, position for position.
    """
    by_window = {int(r.get("window", -1)): r for r in rows if r.get("kind") == EVAL_ROW_KIND}
    if sorted(by_window) != list(range(len(reference.windows))):
        raise BoardError(
            f"the board answered {len(by_window)} of {len(reference.windows)} evaluation windows"
        )
    target, top1, kld = [], [], []
    for index, (p_topk, p_rest) in enumerate(zip(side.topk_logp, side.rest_logp, strict=True)):
        row = by_window[index]
        if set(ROW_KEYS) - set(row):
            raise BoardError(
                f"window {index}: the board's row lacks {sorted(set(ROW_KEYS) - set(row))}"
            )
        if len(row["target_logp"]) != len(p_rest):
            raise BoardError(f"window {index}: {len(row['target_logp'])} positions, "
                             f"expected {len(p_rest)}")  # fmt: skip
        target.append(np.asarray(row["target_logp"], dtype=np.float64))
        top1.append(np.asarray(row["top1"], dtype=np.int64))
        kld.append(_binned_kl(p_topk, p_rest, row))
    nll = -np.concatenate(target)
    ppl_float = math.exp(-float(reference.target_logp.sum()) / reference.positions)
    ppl = math.exp(float(nll.mean()))
    return {
        "device_ppl": ppl,
        "device_ppl_delta_pct": 100.0 * (ppl - ppl_float) / ppl_float,
        "device_kld_mean": float(np.concatenate(kld).mean()),
        "device_top1_agreement": float((np.concatenate(top1) == reference.top1).mean()),
        "device_eval_tokens": float(len(nll)),
        "device_eval_topk": float(side.ids[0].shape[-1]),
    }


def _binned_kl(p_topk: np.ndarray, p_rest: np.ndarray, row: dict[str, Any]) -> np.ndarray:
    """Per position KL(p || q) over the top-k ids and one bucket for every other token."""
    q_topk = np.asarray(row["topk_logp"], dtype=np.float64)
    q_rest = np.asarray(row["rest_logp"], dtype=np.float64)
    terms = np.exp(p_topk) * (p_topk - q_topk)
    with np.errstate(invalid="ignore"):  # an empty bucket (p_rest = -inf) adds nothing
        rest = np.where(np.isfinite(p_rest), np.exp(p_rest) * (p_rest - q_rest), 0.0)
    return terms.sum(axis=-1) + rest


def evaluate_on_board(
    run_rows: Callable[[str], list[dict[str, Any]]],
    push: Callable[[Path], str],
    reference_file: Path,
    topk: int,
) -> tuple[dict[str, float], str | None]:
    """Score the variant on the board: ``push`` copies the request there and returns its path
    on the board, ``run_rows`` runs the runner on it and returns its JSON rows.

    Returns the ``device_*`` figures and None, or ``{MISSING: 1.0}`` and the reason, in one
    line, when the board could not give them (the stage keeps its other results).
    """
    start = time.perf_counter()
    try:
        reference = load_reference(reference_file)
        side = reference_side(reference, topk)
        with tempfile.TemporaryDirectory(prefix="rkpipe-device-eval-") as tmp:
            request = Path(tmp) / "eval_request.json"
            write_request(reference, side, request)
            rows = run_rows(push(request))
        figures = score_rows(reference, side, rows)
    except (BoardError, BackendError, OSError, ValueError, KeyError) as exc:  # one line, kept
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("device accuracy missing: %s", reason)
        return {MISSING: 1.0}, reason
    figures[MISSING] = 0.0
    figures["device_eval_s"] = time.perf_counter() - start
    log.info("device accuracy: %s", {k: round(v, 5) for k, v in figures.items()})
    return figures, None
