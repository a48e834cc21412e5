"""WER of the rknn encoder in rknn-toolkit2's x86 simulator, decoded by the project's decoder.

Rockchip's model zoo reports int8 Whisper encoders that give empty or garbage transcripts on the
NPU (rknn_model_zoo #314); a cosine on two clips does not show that, a WER does. The quantize_asr
stage (``asr.backend=rknn``) simulates ``asr.rknn.sim_clips_per_variant`` clips of every test-set
variant (the first sentences, in test-set order) with the converted encoder, decodes each output
with the fp32 onnxruntime decoder (Whisper: greedy, the pipeline's prompt and token limit;
wav2vec2: greedy CTC), and scores it against the same clips decoded from the fp32 onnxruntime
encoder. The simulator cannot run a model loaded back from ``.rknn``, so this happens in the
conversion run, on the very model that is exported.

Figures (``rknn_`` + name in the conversion's metrics, ``asr_rknn_`` + name in the stage's):
``sim_wer`` / ``sim_wer_fp32`` / ``sim_wer_delta`` (points) over the simulated clips, the same
per test-set variant (``sim_wer.white_10db`` ...), ``sim_empty`` (clips the simulator left
empty while onnxruntime did not) and ``sim_clips``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def pick_eval_clips(testset_dir: Path, per_variant: int) -> list[tuple[str, Any, str, str]]:
    """The first ``per_variant`` clips of each variant: ``[(name, audio, text, group)]``."""
    from rkpipe.asr.evaluate import load_testset
    from rkpipe.asr.testset import clip_variants

    if per_variant <= 0:
        return []
    variant_of = clip_variants(testset_dir)
    taken: dict[str, int] = defaultdict(int)
    picked = []
    for name, audio, text in load_testset(testset_dir):
        group = variant_of[name]
        if taken[group] < per_variant:
            taken[group] += 1
            picked.append((name, audio, text, group))
    return picked


def simulated_wer(
    fp32_dir: Path,
    outputs: list[Path],
    references: list[Path],
    clips: list[tuple[str, Any, str, str]],
    decoding: dict,
) -> dict[str, float]:
    """Decode every simulator output and its onnxruntime reference; WER metrics (module doc).

    ``decoding``: ``max_new_tokens``, ``language``, ``task`` of the pipeline's ASR config.
    """
    import numpy as np

    from rkpipe.asr.architectures import of_export
    from rkpipe.asr.engine import load_engine
    from rkpipe.asr.evaluate import text_decoder
    from rkpipe.asr.normalizer import normalize_text

    engine = load_engine(fp32_dir)
    arch = of_export(fp32_dir)
    to_text = text_decoder(engine, fp32_dir)
    hyps: dict[str, list[str]] = {"sim": [], "fp32": []}
    for out, ref in zip(outputs, references, strict=True):
        for key, path in (("sim", out), ("fp32", ref)):
            ids = arch.decode_encoder_output(engine, np.load(path), decoding)
            hyps[key].append(normalize_text(to_text(ids)))
    refs = [normalize_text(text) for _, _, text, _ in clips]
    groups = [group for *_, group in clips]
    return _wer_metrics(refs, hyps, groups)


def _wer_metrics(refs: list[str], hyps: dict[str, list[str]], groups: list[str]) -> dict:
    import jiwer

    def wers(idx: list[int], suffix: str) -> dict[str, float]:
        ref = [refs[i] for i in idx]
        sim = jiwer.wer(ref, [hyps["sim"][i] for i in idx])
        fp32 = jiwer.wer(ref, [hyps["fp32"][i] for i in idx])
        return {f"sim_wer{suffix}": sim, f"sim_wer_fp32{suffix}": fp32,
                f"sim_wer_delta{suffix}": 100.0 * (sim - fp32)}  # fmt: skip

    metrics = wers(list(range(len(refs))), "")
    for group in sorted(set(groups)):
        metrics |= wers([i for i, g in enumerate(groups) if g == group], f".{group}")
    metrics["sim_empty"] = float(
        sum(not s and bool(f) for s, f in zip(hyps["sim"], hyps["fp32"], strict=True))
    )
    metrics["sim_clips"] = float(len(refs))
    return metrics
