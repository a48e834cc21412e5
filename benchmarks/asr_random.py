"""ASR quantization schemes on random-weight models sized like Whisper-base and wav2vec2-base:
size, RTF, encoder RTF, output cosines, peak RSS (the real-weight figures are in asr_host.py).

These larger configs have no real weights offline, so two randomly initialised models are used:

* ``base``: a Whisper-base-sized config (d_model 512, 6+6 layers, 8 heads, ffn 2048, vocab
  51865; about 72 M parameters) for the size, speed and memory figures. Its WER is MEANINGLESS
  (random weights); fp32-vs-quantized token agreement is reported instead.
* ``tiny``: the offline default tiny Whisper, run through ``rkpipe.asr.evaluate`` for the WER
  plumbing (WER meaningless there too).
* ``--ctc``: also a wav2vec2-base-sized CTC model (hidden 768, 12 layers, 95 M parameters).

Accuracy with random weights: greedy ids flip on near-flat logits, so the base-sized models report
the min cosine similarity with fp32 of the encoder output (CTC: the logits) and of the first
decoder step's logits on two clips; token agreement and the tiny model's WER delta are shown too.

Every variant runs in its own process (``python -m rkpipe.engines.<engine>``, its JSON rows give
the encoder/total times and the process's peak RSS); the variants alternate within each round,
so machine noise hits all alike. Ratios are fp32 / variant for speed (higher = faster) and
variant / fp32 for size and memory (lower = smaller).

    python benchmarks/asr_random.py [--rounds 3] [--clips 6] [--ctc] [--markdown out.md]

Targets (issue 6): size <= 0.30x fp32, encoder RTF >= 1.5x faster, WER delta <= 1 point.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from rkpipe.asr.engine import engine_name
from rkpipe.asr.evaluate import evaluate_asr, token_agreement
from rkpipe.asr.export import export_fp32_onnx
from rkpipe.asr.model import acquire_asr
from rkpipe.asr.quantize import quantize_asr
from rkpipe.config.schema import AsrConfig, AsrInitConfig, AsrQuantConfig, PathsConfig
from rkpipe.io import onnx_size_mb
from rkpipe.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("asr_random")

BASE = AsrInitConfig(d_model=512, encoder_layers=6, decoder_layers=6, attention_heads=8,
                     ffn_dim=2048)  # fmt: skip
CTC_BASE = AsrInitConfig(
    d_model=768,
    encoder_layers=12,
    attention_heads=12,
    ffn_dim=3072,
    vocab_size=32,
    conv_dim=512,
    conv_pos_kernel=128,
    conv_pos_groups=16,
)
MG = ["MatMul", "Gather"]
VARIANTS = {
    "dynamic": AsrQuantConfig(),
    "dynamic_untied": AsrQuantConfig(tie_embedding=False),  # the seed's exact graph
    "dynamic_u8": AsrQuantConfig(weight_type="QUInt8"),
    "dynamic_per_channel": AsrQuantConfig(per_channel=True),
    "dynamic_gather": AsrQuantConfig(op_types=MG),
    "static_qdq": AsrQuantConfig(scheme="static_qdq"),
    "nbits4_dec+int8_enc": AsrQuantConfig(scheme="matmul_nbits4", encoder_scheme="dynamic",
                                          op_types=MG),
    "nbits4_all_acc4": AsrQuantConfig(scheme="matmul_nbits4", op_types=MG, accuracy_level=4),
    "dynamic_conv": AsrQuantConfig(op_types=["MatMul", "Conv"]),  # ConvInteger (CTC only)
}  # fmt: skip
WHISPER_VARIANTS = [v for v in VARIANTS if v != "dynamic_conv"]
CTC_VARIANTS = ("dynamic", "dynamic_per_channel", "dynamic_conv", "static_qdq", "nbits4_all_acc4")
TARGETS = {"size": 0.30, "encoder_speedup": 1.5, "wer_delta": 1.0}


def build(root: Path, cfg: AsrConfig, variants: list[str]) -> dict[str, Path]:
    """Acquire + export ``cfg`` under ``root`` and quantize every variant; returns dirs."""
    dirs = {"fp32": root / "fp32"}
    if not dirs["fp32"].is_dir():
        acquire_asr(cfg, root / "model")
        export_fp32_onnx(root / "model", dirs["fp32"])
    for name in variants:
        dirs[name] = root / name
        if not dirs[name].is_dir():
            start = time.perf_counter()
            quantize_asr(dirs["fp32"], dirs[name], VARIANTS[name])
            log.info("%s/%s quantized in %.1f s", root.name, name, time.perf_counter() - start)
    return dirs


def run_variant(model_dir: Path, clips: list[Path], threads: int, max_new_tokens: int) -> list:
    """One process of the variant's engine over ``clips``: its non-warm-up JSON rows."""
    argv = [sys.executable, "-m", f"rkpipe.engines.{engine_name(model_dir)}",
            "--model", str(model_dir), "--audio", *map(str, clips), "--warmup", "1",
            "--repetitions", "1", "--threads", str(threads),
            "--max-new-tokens", str(max_new_tokens)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{model_dir.name} failed: {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in rows if not r["warmup"]]


def measure(
    dirs: dict[str, Path], clips: list[Path], rounds: int, threads: int, max_new_tokens: int
) -> dict[str, dict]:
    """Alternate the variants ``rounds`` times; per variant the summed times and peak RSS."""
    stats = {name: {"total_ms": [], "encoder_ms": [], "rss": [], "ids": None} for name in dirs}
    audio_s = None
    for rnd in range(rounds):
        order = list(dirs) if rnd % 2 == 0 else list(reversed(dirs))
        for name in order:
            rows = run_variant(dirs[name], clips, threads, max_new_tokens)
            stats[name]["total_ms"].append(sum(r["total_ms"] for r in rows))
            stats[name]["encoder_ms"].append(sum(r["encoder_ms"] for r in rows))
            stats[name]["rss"].append(max(r["peak_rss_mb"] for r in rows))
            stats[name]["ids"] = [r["ids"] for r in rows]
            audio_s = sum(r["audio_s"] for r in rows)
        log.info("round %d/%d done", rnd + 1, rounds)
    for s in stats.values():
        s["rtf"] = statistics.median(s["total_ms"]) / 1e3 / audio_s
        s["encoder_rtf"] = statistics.median(s["encoder_ms"]) / 1e3 / audio_s
        s["peak_rss_mb"] = statistics.median(s["rss"])
    return stats


def output_cosines(dirs: dict[str, Path], clips: list[Path]) -> dict[str, tuple]:
    """Per variant the min cosine similarity with fp32 over ``clips`` of the encoder output
    (Whisper; the logits for CTC) and of the first decoder step's logits (Whisper only).

    With random weights greedy ids flip easily (near-flat logits), so these are the meaningful
    accuracy figures of the base-sized models.
    """
    import numpy as np

    from rkpipe.asr.engine import load_engine
    from rkpipe.engines.engine_shared import load_clip

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    outputs = {}
    for name, path in dirs.items():
        engine, rows = load_engine(path), []
        for clip in clips:
            features = engine.features(load_clip(str(clip)))
            if hasattr(engine, "encode"):
                hidden = engine.encode(features)
                logits, _ = engine._first_step(hidden, engine.prompt_ids())
                rows.append((hidden, logits[0, -1]))
            else:
                logits = engine.logits(features)
                rows.append((logits, None))
        outputs[name] = rows
    ref = outputs["fp32"]
    return {
        name: (min(cos(a[0], b[0]) for a, b in zip(ref, rows, strict=True)),
               None if rows[0][1] is None else
               min(cos(a[1], b[1]) for a, b in zip(ref, rows, strict=True)))
        for name, rows in outputs.items()
    }  # fmt: skip


def wer_deltas(dirs: dict[str, Path], testset: Path, threads: int) -> dict[str, dict]:
    """evaluate_asr (fp32 vs variant) per variant: WER/CER and their deltas, agreement."""
    out = {}
    for name, path in dirs.items():
        if name == "fp32":
            continue
        m = evaluate_asr(
            dirs["fp32"], path, testset, dirs["fp32"], "en", "transcribe", 16, threads, warmup=0
        )
        out[name] = {
            k: m[k]
            for k in (
                "asr_wer",
                "asr_wer_fp32",
                "asr_wer_delta",
                "asr_cer_delta",
                "asr_token_agreement",
            )
        }
    return out


def table(title: str, dirs: dict, stats: dict, cosines: dict, wers: dict | None) -> str:
    """A markdown table: ratios against fp32, output cosines, agreement, tiny WER delta."""
    fp32 = stats["fp32"]
    size32 = onnx_size_mb(dirs["fp32"])
    lines = [f"#### {title}", "",
             "| variant | size MB | size ratio | RTF | RTF speed-up | encoder RTF | encoder "
             "speed-up | peak RSS MB | RSS ratio | encoder cos | logits cos | token "
             "agreement | WER delta (tiny) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in stats.items():
        size = onnx_size_mb(dirs[name])
        agree = token_agreement(fp32["ids"], s["ids"])
        wer = "" if not wers or name not in wers else f"{wers[name]['asr_wer_delta']:+.1f}"
        enc, logit = cosines[name]
        logit_text = "" if logit is None else f"{logit:.5f}"
        lines.append(
            f"| {name} | {size:.1f} | {size / size32:.3f} | {s['rtf']:.4f} | "
            f"{fp32['rtf'] / s['rtf']:.2f}x | {s['encoder_rtf']:.4f} | "
            f"{fp32['encoder_rtf'] / s['encoder_rtf']:.2f}x | {s['peak_rss_mb']:.0f} | "
            f"{s['peak_rss_mb'] / fp32['peak_rss_mb']:.3f} | {enc:.5f} | {logit_text} | "
            f"{agree:.3f} | {wer} |"
        )
    return "\n".join(lines) + "\n"


def testset_clips(count: int, work: Path) -> tuple[Path, list[Path]]:
    """The project's synthetic test set (synthesized into ``work`` if absent), first clips."""
    testset = Layout.from_paths(PathsConfig(), ROOT).asr_testset
    if not (testset / "transcripts.jsonl").is_file():
        from rkpipe.asr.testset import synthesize_testset

        testset = work / "testset"
        if not testset.is_dir():
            synthesize_testset(ROOT / "data" / "asr" / "sentences.txt", testset)
    return testset, sorted(testset.glob("*.wav"))[:count]


def whisper_tables(args: argparse.Namespace, testset: Path, clips: list[Path]) -> tuple:
    """Build and measure the Whisper-base-sized variants (+ tiny WER); (markdown, wers)."""
    variants = [v for v in args.variants if v in WHISPER_VARIANTS]
    base = AsrConfig(name="whisper-base-random", init=BASE)
    dirs = build(args.work / "whisper_base", base, variants)
    wers = None
    if not args.no_wer:
        tiny = build(args.work / "whisper_tiny", AsrConfig(), variants)
        wers = wer_deltas(tiny, testset, args.threads)
    stats = measure(dirs, clips, args.rounds, args.threads, args.max_new_tokens)
    title = (
        f"Whisper-base-sized, random weights ({len(clips)} clips, {args.rounds} rounds, "
        f"{args.threads} threads, {args.max_new_tokens} new tokens)"
    )
    return table(title, dirs, stats, output_cosines(dirs, clips[:2]), wers), wers


def main(argv: list[str] | None = None) -> int:
    """Build, measure and print the tables; returns 0."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkpipe-asr-bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--skip-whisper", action="store_true", help="only the --ctc model")
    parser.add_argument("--ctc", action="store_true", help="also a wav2vec2-base-sized model")
    parser.add_argument("--no-wer", action="store_true", help="skip the tiny-model WER run")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger().handlers[0].addFilter(lambda r: r.name != "root")  # ORT's chatter
    testset, clips = testset_clips(args.clips, args.work)
    out, wers = "", None
    if not args.skip_whisper:
        out, wers = whisper_tables(args, testset, clips)
    if args.ctc:
        ctc_cfg = replace(
            AsrConfig(), name="wav2vec2-base-random", architecture="wav2vec2", init=CTC_BASE
        )
        ctc_variants = [v for v in CTC_VARIANTS if v in args.variants]
        ctc_dirs = build(args.work / "wav2vec2_base", ctc_cfg, ctc_variants)
        ctc_stats = measure(ctc_dirs, clips, args.rounds, args.threads, args.max_new_tokens)
        out += "\n" + table(
            f"wav2vec2-base-sized CTC, random weights ({len(clips)} clips, {args.rounds} rounds)",
            ctc_dirs,
            ctc_stats,
            output_cosines(ctc_dirs, clips[:2]),
            None,
        )
    print(out)
    if wers:
        print(
            "tiny-model WER (meaningless, random weights):",
            json.dumps({k: round(v["asr_wer_delta"], 2) for k, v in wers.items()}),
        )
    if args.markdown:
        args.markdown.write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
