"""Compare the fp32 and quantized ASR ONNX models on a spoken test set: WER, CER, speed, size.

Both models run in the same process with the same engine (the one ``engine.json`` names:
``rkpipe.engines.ort_whisper`` or ``rkpipe.engines.ort_ctc``), clip by clip in alternation, so
machine noise hits both alike. Metric keys are flat and carry the
variant as a suffix: ``asr_wer`` (quantized) vs ``asr_wer_fp32``. The real-time factor measured
here is ``asr_host_rtf``: ``asr_rtf`` is the board's, in ``metrics/bench.json`` (one name per
figure, or MLflow keeps whichever was logged last).

References and hypotheses pass through Whisper's English normaliser
(:mod:`rkpipe.asr.normalizer`) before jiwer aligns them, as published WERs do. The test set's
clips may be variants of one sentence (``"variant"`` in ``transcripts.jsonl``: clean, noise,
tempo, voice; ``clean`` when absent): WER/CER are also reported per clip variant, as
``asr_wer.<clip variant>`` (``asr_wer.white_10db``), ``asr_wer_fp32.<clip variant>`` and so on;
the plain names cover the whole set.
"""

from __future__ import annotations

import json
import logging
import re
import wave
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

from rkpipe.asr.normalizer import normalize_text
from rkpipe.asr.testset import CLEAN, TRANSCRIPTS, clip_variants
from rkpipe.asr.whisper_tokenizer import load_whisper_tokenizer
from rkpipe.errors import AsrError
from rkpipe.io import write_text_atomic
from rkpipe.progress import track

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VARIANTS = ("fp32", "quant")
# MLflow accepts only these characters in a metric name; a voice may be named "en-us+f3"
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


# --------------------------------------------------------------------------- test set


def load_testset(testset_dir: Path) -> list[tuple[str, Any, str]]:
    """Read ``transcripts.jsonl`` and its WAV files: ``[(name, float32 16 kHz audio, text)]``.

    A clip at another sample rate is resampled (with a warning). Raises :class:`AsrError` naming
    the file for a missing/malformed transcripts file, an unreadable or empty WAV, or when the
    transcripts and the ``*.wav`` files of the directory do not match one to one.
    """
    from rkpipe.engines.engine_shared import read_wav, resample

    testset_dir = Path(testset_dir)
    rows = _read_transcripts(testset_dir / TRANSCRIPTS)
    _check_files_match(testset_dir, [name for name, _ in rows])
    clips = []
    for name, text in rows:
        path = testset_dir / name
        try:
            audio, rate = read_wav(path)
        except (wave.Error, EOFError, ValueError, OSError) as exc:
            raise AsrError(f"cannot read audio {path}: {exc}") from exc
        if audio.size == 0:
            raise AsrError(f"audio {path} is empty (0 samples); re-create the test set")
        if rate != SAMPLE_RATE:
            logger.warning("%s is %d Hz; resampling to %d Hz", path, rate, SAMPLE_RATE)
            audio = resample(audio, rate, SAMPLE_RATE)
        clips.append((name, audio, text))
    return clips


def _read_transcripts(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise AsrError(f"{path} not found: synthesize the test set first")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = str(row["audio"]), str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise AsrError(
                f'{path}:{number}: expected {{"audio": "clip.wav", "text": "..."}}, '
                f"got {line[:80]!r}"
            ) from exc
        if not normalize_text(text):
            raise AsrError(
                f"{path}:{number}: the transcript of {name} is empty once normalised "
                f"(Whisper's normaliser drops punctuation and fillers such as 'um')"
            )
        rows.append((name, text))
    if not rows:
        raise AsrError(f"{path} lists no clips")
    return rows


def _check_files_match(testset_dir: Path, listed: list[str]) -> None:
    on_disk = {p.name for p in testset_dir.glob("*.wav")}
    duplicates = sorted({n for n in listed if listed.count(n) > 1})
    missing = sorted(set(listed) - on_disk)
    unlisted = sorted(on_disk - set(listed))
    if duplicates or missing or unlisted:
        raise AsrError(
            f"{testset_dir / TRANSCRIPTS} does not match the WAV files: missing files {missing}, "
            f"files without a transcript {unlisted}, listed twice {duplicates}"
        )


# --------------------------------------------------------------------------- evaluation


def evaluate_asr(
    fp32_dir: Path,
    quant_dir: Path,
    testset_dir: Path,
    tokenizer_dir: Path,
    language: str | None,
    task: str,
    max_new_tokens: int,
    threads: int,
    random_weights: bool | None = None,
    warmup: int = 1,
    details_path: Path | None = None,
) -> dict:
    """WER/CER/RTF/latency/size of the fp32 and quantized models on the test set, and their deltas.

    Whisper: greedy decoding with the prompt
    ``<|startoftranscript|><|language|><|task|><|notimestamps|>`` (``language=None`` leaves the
    language token out), ids decoded by the tokenizer in ``tokenizer_dir``. CTC (wav2vec2):
    greedy CTC labels decoded by the engine's own character table (``language``, ``task`` and
    ``max_new_tokens`` do not apply). ``random_weights`` defaults to the flag
    in ``fp32_dir/engine.json``. ``details_path`` (optional) receives one JSON line per clip and
    variant. Returns flat metrics (see module doc): ``asr_wer``, ``asr_cer``, ``asr_host_rtf``,
    ``asr_encoder_ms_mean``, ``asr_decoder_ms_mean`` and their ``_fp32`` twins,
    ``asr_wer_delta``/``asr_cer_delta`` (quant - fp32, in points), ``asr_host_rtf_speedup``
    (fp32 rtf / quant rtf), ``asr_token_agreement``, ``asr_exact_match``,
    ``asr_clips``, ``asr_audio_s`` and ``asr_random_weights``, and per clip variant the
    figures of :func:`clip_variant_metrics`. Raises :class:`AsrError` for
    unusable inputs.
    """
    clips = load_testset(testset_dir)
    engines = _load_engines(Path(fp32_dir), Path(quant_dir), threads)
    decode = text_decoder(engines["fp32"], Path(tokenizer_dir))
    runs = _run_all(engines, clips, language, task, max_new_tokens, warmup)
    refs = [normalize_text(text) for _, _, text in clips]
    hyps = {v: [normalize_text(decode(r["ids"])) for r in runs[v]] for v in VARIANTS}
    by_name = clip_variants(testset_dir)
    groups = [by_name[name] for name, _, _ in clips]
    if details_path is not None:
        _write_details(Path(details_path), clips, runs, hyps, groups)
    if random_weights is None:
        random_weights = engines["fp32"].info.get("random_weights")
    metrics = _metrics(refs, hyps, runs, groups)
    metrics["asr_random_weights"] = bool(random_weights)
    # The sizes are quantize_asr's figures (asr_size_mb, asr_size_ratio): logged, not repeated.
    _log_summary(metrics, {"fp32": _size(fp32_dir), "quant": _size(quant_dir)})
    return metrics


def board_wer(
    testset_dir: Path, quant_dir: Path, tokenizer_dir: Path, rows: list[dict[str, Any]]
) -> dict[str, float]:
    """WER and CER of the transcripts the board produced while deploy_bench measured its RTF
    (the first measured repetition of each clip, the clean clips only), normalised and aligned
    as :func:`evaluate_asr` does: ``device_asr_wer``, ``device_asr_cer``, ``device_asr_clips``.
    The host's figure on the same clips is ``asr_wer.clean``.

    Raises:
        AsrError: no measured clip, or a clip the test set does not list.
    """
    import jiwer

    from rkpipe.asr.engine import load_engine

    texts = dict(_read_transcripts(Path(testset_dir) / TRANSCRIPTS))
    ids: dict[str, list[int]] = {}
    for row in rows:
        if row.get("kind") == "asr" and not row.get("warmup"):
            if "clip" not in row or "ids" not in row:
                raise AsrError("the board's ASR rows carry no clip name or transcript ids")
            ids.setdefault(str(row["clip"]), list(row["ids"]))
    unknown = sorted(set(ids) - set(texts))
    if not ids or unknown:
        raise AsrError(f"the board transcribed no clip of the test set ({unknown or 'none'})")
    decode = text_decoder(load_engine(quant_dir, threads=1), Path(tokenizer_dir))
    names = sorted(ids)
    refs = [normalize_text(texts[name]) for name in names]
    hyps = [normalize_text(decode(ids[name])) for name in names]
    return {
        "device_asr_wer": jiwer.wer(refs, hyps),
        "device_asr_cer": jiwer.cer(refs, hyps),
        "device_asr_clips": float(len(names)),
    }


def _load_engines(fp32_dir: Path, quant_dir: Path, threads: int) -> dict:
    """Both variants' engines; :class:`AsrError` if one cannot load or their engines differ."""
    from rkpipe.asr.engine import engine_name, load_engine

    names = {engine_name(fp32_dir), engine_name(quant_dir)}
    if len(names) != 1:
        raise AsrError(
            f"{fp32_dir} and {quant_dir} need different engines {sorted(names)}; quantize the "
            f"same export you compare with"
        )
    return {
        variant: load_engine(path, threads=threads)
        for variant, path in zip(VARIANTS, (fp32_dir, quant_dir), strict=True)
    }


def text_decoder(engine: Any, tokenizer_dir: Path) -> Any:
    """ids -> text: the CTC engine's character table, else the Whisper tokenizer."""
    if hasattr(engine, "text"):
        return engine.text
    tokenizer = load_whisper_tokenizer(tokenizer_dir)
    return lambda ids: _decode(tokenizer, ids)


def _run_all(engines: dict, clips: list, language, task, max_new_tokens, warmup) -> dict:
    """Transcribe every clip with both engines, alternating per clip after a warm-up."""
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    try:
        for variant in VARIANTS:
            for _ in range(warmup):
                engines[variant].transcribe_ids(clips[0][1], max_new_tokens, language, task)
        for _, audio, _ in track(clips, "transcribing the test clips (fp32 and quantized)"):
            for variant in VARIANTS:
                result = engines[variant].transcribe_ids(audio, max_new_tokens, language, task)
                runs[variant].append(result)
    except ValueError as exc:  # unknown language/task
        raise AsrError(f"ASR decoding failed: {exc}") from exc
    return runs


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _size(model_dir: Path) -> float:
    from rkpipe.io import onnx_size_mb

    return onnx_size_mb(Path(model_dir))


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Position-wise agreement of two id sequences per clip: matches / sum of the longer lengths.

    Positions past the shorter sequence count as disagreements; 1.0 when both are all empty.
    """
    pairs = list(zip(a, b, strict=True))
    matches = sum(sum(x == y for x, y in zip(sa, sb, strict=False)) for sa, sb in pairs)
    total = sum(max(len(sa), len(sb)) for sa, sb in pairs)
    return matches / total if total else 1.0


def _metrics(refs: list[str], hyps: dict, runs: dict, groups: list[str] | None = None) -> dict:
    """The flat metrics of the whole set; ``groups`` (each clip's test-set variant, all
    ``clean`` when None) adds :func:`clip_variant_metrics`."""
    import jiwer

    out: dict[str, Any] = {}
    for variant in VARIANTS:
        suffix = "" if variant == "quant" else "_fp32"
        rows = runs[variant]
        processing_s = sum(r["total_ms"] for r in rows) / 1e3
        out[f"asr_wer{suffix}"] = jiwer.wer(refs, hyps[variant])
        out[f"asr_cer{suffix}"] = jiwer.cer(refs, hyps[variant])
        out[f"asr_host_rtf{suffix}"] = processing_s / sum(r["audio_s"] for r in rows)
        out[f"asr_encoder_ms_mean{suffix}"] = mean(r["encoder_ms"] for r in rows)
        out[f"asr_decoder_ms_mean{suffix}"] = mean(r["decoder_ms"] for r in rows)
        out[f"asr_new_tokens_mean{suffix}"] = mean(float(len(r["ids"])) for r in rows)
    ids = {v: [r["ids"] for r in runs[v]] for v in VARIANTS}
    out["asr_wer_delta"] = 100.0 * (out["asr_wer"] - out["asr_wer_fp32"])
    out["asr_cer_delta"] = 100.0 * (out["asr_cer"] - out["asr_cer_fp32"])
    out["asr_host_rtf_speedup"] = out["asr_host_rtf_fp32"] / out["asr_host_rtf"]
    out["asr_token_agreement"] = token_agreement(ids["fp32"], ids["quant"])
    out["asr_exact_match"] = mean(
        float(a == b) for a, b in zip(ids["fp32"], ids["quant"], strict=True)
    )
    out["asr_clips"] = len(refs)
    out["asr_audio_s"] = sum(r["audio_s"] for r in runs["fp32"])
    return out | clip_variant_metrics(refs, hyps, groups or [CLEAN] * len(refs))


def clip_variant_metrics(
    refs: list[str], hyps: dict[str, list[str]], groups: list[str]
) -> dict[str, float]:
    """WER/CER of both models on each test-set variant's clips (``groups[i]`` is clip i's).

    Keys, for each variant ``v``: ``asr_wer.v``, ``asr_cer.v`` (quantized), ``asr_wer_fp32.v``,
    ``asr_cer_fp32.v``, ``asr_wer_delta.v`` (quant - fp32, in points) and ``asr_clips.v``.
    Each name starts with the whole-set figure's, so the key-sorted metrics file lists them
    right after it.
    """
    import jiwer

    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[_UNSAFE_IN_NAME.sub("_", group)].append(i)
    out: dict[str, float] = {}
    for group, idx in sorted(members.items()):
        ref = [refs[i] for i in idx]
        for model in VARIANTS:
            suffix = "" if model == "quant" else "_fp32"
            hyp = [hyps[model][i] for i in idx]
            out[f"asr_wer{suffix}.{group}"] = jiwer.wer(ref, hyp)
            out[f"asr_cer{suffix}.{group}"] = jiwer.cer(ref, hyp)
        out[f"asr_wer_delta.{group}"] = 100.0 * (
            out[f"asr_wer.{group}"] - out[f"asr_wer_fp32.{group}"]
        )
        out[f"asr_clips.{group}"] = float(len(idx))
    return out


def _write_details(path: Path, clips: list, runs: dict, hyps: dict, groups: list[str]) -> None:
    lines = []
    for i, (name, _, text) in enumerate(clips):
        for variant in VARIANTS:
            run = runs[variant][i]
            row = {"clip": name, "clip_variant": groups[i], "variant": variant, "ref": text,
                   "hyp": hyps[variant][i]}  # fmt: skip
            row.update(
                {k: run[k] for k in ("ids", "encoder_ms", "decoder_ms", "total_ms", "audio_s")}
            )
            lines.append(json.dumps(row) + "\n")
    write_text_atomic(path, "".join(lines))


def _log_summary(m: dict, sizes: dict[str, float]) -> None:
    logger.info(
        "ASR fp32 vs quant: WER %.3f vs %.3f, RTF %.4f vs %.4f (x%.2f), size %.1f vs %.1f MB, "
        "token agreement %.3f%s",
        m["asr_wer_fp32"],
        m["asr_wer"],
        m["asr_host_rtf_fp32"],
        m["asr_host_rtf"],
        m["asr_host_rtf_speedup"],
        sizes["fp32"],
        sizes["quant"],
        m["asr_token_agreement"],
        " (RANDOM WEIGHTS: WER is meaningless)" if m["asr_random_weights"] else "",
    )
