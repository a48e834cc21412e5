"""Perplexity, KL divergence, top-1 agreement and windowing on small exact cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rkpipe.evaluate.llm import (
    _Sums,
    kl_divergence,
    log_softmax,
    perplexity,
    token_windows,
    top1_agreement,
)

LN = np.log


def test_log_softmax_is_stable_and_float64() -> None:
    out = log_softmax(np.array([[1000.0, 1000.0], [-1000.0, -1000.0]], dtype=np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, -math.log(2.0), rtol=0, atol=1e-15)


def test_perplexity_of_uniform_logits_is_the_vocab_size() -> None:
    assert perplexity(np.zeros((5, 7)), [0, 1, 2, 3, 6]) == pytest.approx(7.0, rel=1e-12)


def test_perplexity_exact_values() -> None:
    logits = LN(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    assert perplexity(logits[:1], [0]) == pytest.approx(2.0, rel=1e-12)
    assert perplexity(logits[:1], [1]) == pytest.approx(4.0, rel=1e-12)
    # exp((ln 2 + ln 4) / 2) = sqrt(8)
    assert perplexity(logits, [0, 1]) == pytest.approx(math.sqrt(8.0), rel=1e-12)


def test_perplexity_is_shift_invariant() -> None:
    logits = np.array([[0.1, 2.0, -1.0]])
    assert perplexity(logits + 123.0, [1]) == pytest.approx(perplexity(logits, [1]), rel=1e-12)


def test_perplexity_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 logit rows for 1 targets"):
        perplexity(np.zeros((2, 3)), [0])


def test_kl_divergence_exact_value() -> None:
    p = LN(np.array([[0.5, 0.5], [0.5, 0.5]]))
    q = LN(np.array([[0.25, 0.75], [0.5, 0.5]]))
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); identical rows give 0
    np.testing.assert_allclose(kl_divergence(p, q), [0.5 * math.log(4 / 3), 0.0], atol=1e-15)


def test_kl_divergence_is_zero_for_shifted_logits_and_not_symmetric() -> None:
    x = np.array([[0.3, -1.2, 2.0, 0.0]])
    assert kl_divergence(x, x + 5.0)[0] == pytest.approx(0.0, abs=1e-14)
    y = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert kl_divergence(x, y)[0] != pytest.approx(kl_divergence(y, x)[0])


def test_top1_agreement_exact_fraction() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cand = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert top1_agreement(ref, cand) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("n", "lengths"),
    [(1024, [512, 512]), (1030, [512, 512]), (1040, [512, 512, 16]), (10, []), (512, [512])],
)
def test_token_windows_drop_a_short_tail(n: int, lengths: list[int]) -> None:
    windows = token_windows(list(range(n)), 512)
    assert [len(w) for w in windows] == lengths
    assert [t for w in windows for t in w] == list(range(sum(lengths)))


def test_sums_match_the_pure_helpers_across_chunks() -> None:
    rng = np.random.RandomState(0)
    ref, cand = rng.randn(300, 11), rng.randn(300, 11)
    targets = rng.randint(0, 11, size=300)
    sums = _Sums()
    sums.add(ref, cand, targets)  # 300 rows cross the 128-row chunks
    metrics = sums.metrics()
    assert metrics["ppl_float"] == pytest.approx(perplexity(ref, targets), rel=1e-12)
    assert metrics["ppl"] == pytest.approx(perplexity(cand, targets), rel=1e-12)
    assert metrics["kld_mean"] == pytest.approx(kl_divergence(ref, cand).mean(), rel=1e-12)
    assert metrics["top1_agreement"] == pytest.approx(top1_agreement(ref, cand))
    assert metrics["eval_tokens"] == 300
    expected_delta = 100 * (metrics["ppl"] / metrics["ppl_float"] - 1)
    assert metrics["ppl_delta_pct"] == pytest.approx(expected_delta, rel=1e-12)


# ------------------------------------------------------------------ stored reference


def _fake_models(vocab: int = 50, seed: int = 0):
    """Two deterministic "models": logits are a fixed function of the window's token ids."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 3, (vocab, vocab)).astype(np.float32)
    noise = rng.normal(0, 0.5, (vocab, vocab)).astype(np.float32)

    def ref(ids: list[int]) -> np.ndarray:
        return table[ids]

    def cand(ids: list[int]) -> np.ndarray:
        return table[ids] + noise[ids]

    return ref, cand


def test_stored_reference_scores_like_the_full_logits_after_a_round_trip(tmp_path) -> None:
    from rkpipe.evaluate.llm import (
        build_reference,
        load_reference,
        reference_logits,
        save_reference,
        score_logits,
        score_reference,
    )

    ref_fn, cand_fn = _fake_models()
    rng = np.random.default_rng(1)
    windows = token_windows(rng.integers(0, 50, 700).tolist(), 300)  # rows span ROW_CHUNKs
    path = tmp_path / "eval" / "reference_logits.npz"
    save_reference(build_reference(ref_fn, windows), path)
    stored = load_reference(path)
    assert stored.windows == windows
    assert stored.logp[0].dtype == np.float16
    assert stored.positions == sum(len(w) - 1 for w in windows)
    full = score_logits(reference_logits(ref_fn, windows), windows, cand_fn)
    cached = score_reference(stored, cand_fn)
    for key in ("ppl_float", "ppl", "ppl_delta_pct", "top1_agreement", "eval_tokens"):
        assert cached[key] == pytest.approx(full[key], rel=1e-9), key  # exact arrays
    assert full["kld_mean"] > 0.05
    assert cached["kld_mean"] == pytest.approx(full["kld_mean"], rel=1e-3)  # float16 log-probs
    assert score_reference(stored, ref_fn)["kld_mean"] == pytest.approx(0.0, abs=1e-5)
    assert not list(path.parent.glob(".*tmp"))  # written atomically, no temporary left


def test_stored_reference_refuses_another_model_and_a_missing_file(tmp_path) -> None:
    from rkpipe.errors import BackendError
    from rkpipe.evaluate.llm import build_reference, load_reference, save_reference, score_reference

    ref_fn, _ = _fake_models()
    windows = [list(range(20))]
    save_reference(build_reference(ref_fn, windows), tmp_path / "r.npz")
    other_vocab, _ = _fake_models(vocab=60)
    with pytest.raises(BackendError, match="logits shapes differ"):
        score_reference(load_reference(tmp_path / "r.npz"), other_vocab)
    with pytest.raises(BackendError, match="run the reference_logits stage"):
        load_reference(tmp_path / "missing.npz")
