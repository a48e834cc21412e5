"""int8 accuracy per CPU kernel path, before and after ``quant.ort.reduce_range``, in ONE run.

    python benchmarks/int8_kernels.py [--work /tmp/rkpipe-int8-kernels] [--emulate EPYC-Rome]
        [--variants int8,int8_rr,int8_pc,int8_pc_rr,int8_weight_only] [--threads 2]

onnxruntime picks its int8 kernels from the CPU's ISA. On x86 without VNNI (AVX2 only, e.g. an
AMD EPYC Zen 2), the u8 x s8 MatMulInteger adds pairs of products into a saturating int16
(``vpmaddubsw``); on this project's Xeon (AVX-512 VNNI, AMX) it does not. So the same int8
file has a different perplexity on each. This script measures that side by side:

1. builds each variant with the pipeline's own backend into ``--work`` (kept between runs);
2. scores each against the pipeline's stored float reference (``data/eval/reference_logits.npz``,
   run ``dvc repro reference_logits`` first): once natively, on this CPU's kernels, and once
   under ``qemu-x86_64 -cpu <--emulate>`` (Debian's ``qemu-user``), whose CPUID reports AVX2
   and FMA but no AVX-512 and no VNNI, so onnxruntime takes the AVX2 kernels exactly as on such
   a CPU. Emulation changes speed, not arithmetic: only accuracy is reported from it.

Prints a markdown table with the command and both CPUs' kernel flags.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOAT_DIR = ROOT / "models/llm/float"
FP32_DIR = ROOT / "models/llm/onnx_fp32"
CALIB = ROOT / "data/calib/calibration.json"
REFERENCE = ROOT / "data/eval/reference_logits.npz"
# name -> (label, scheme, dtype, quant.ort options)
VARIANTS = {
    "int8": ("ort_int8 (per-tensor)", "dynamic", "int8", {"reduce_range": "false"}),
    "int8_rr": ("ort_int8 + reduce_range", "dynamic", "int8", {"reduce_range": "true"}),
    "int8_pc": ("ort_int8_per_channel", "dynamic", "int8",
                {"per_channel": True, "reduce_range": "false"}),
    "int8_pc_rr": ("ort_int8_per_channel + reduce_range (auto)", "dynamic", "int8",
                   {"per_channel": True, "reduce_range": "true"}),
    "int8_weight_only": ("ort_int8_weight_only (MatMulNBits 8-bit b32, 8-bit emb)",
                         "matmul_nbits", "int8",
                         {"block_size": 32, "accuracy_level": 4, "embedding_bits": 8}),
}  # fmt: skip
# Scores the first ``windows`` windows of the stored reference (emulation runs a few hundred
# times slower than the CPU: one 512-token window takes minutes there).
SCORE = """import json, sys
sys.path.insert(0, {src!r})
from rkpipe.evaluate.llm import Reference, load_onnx_llm, load_reference, score_reference
full = load_reference({ref!r})
n = {windows}
cut = sum(len(w) - 1 for w in full.windows[:n])
ref = Reference(full.windows[:n], full.logp[:n], full.target_logp[:cut], full.top1[:cut])
m = score_reference(ref, load_onnx_llm({model!r}, {threads}).logits)
print("RESULT " + json.dumps(m))
"""


def build(name: str, work: Path) -> Path:
    """Quantize variant ``name`` with the onnxruntime backend (cached in ``work``)."""
    out = work / name
    if (out / "quant_manifest.json").is_file():
        return out
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.backends import get_backend
    from rkpipe.backends.base import QuantizeRequest
    from rkpipe.config.schema import QuantConfig

    _, scheme, dtype, options = VARIANTS[name]
    quant = QuantConfig(dtype=dtype)
    quant.ort.scheme = scheme
    for key, value in options.items():
        setattr(quant.ort, key, value)
    shutil.rmtree(out, ignore_errors=True)
    get_backend("onnxruntime").quantize(
        QuantizeRequest(FLOAT_DIR, FP32_DIR, CALIB, quant, "host", out)
    )
    return out


def score(model: Path, threads: int, windows: int, emulate: str | None) -> tuple[dict, float]:
    """PPL/KLD/top-1 of ``model`` against the stored reference, natively or under qemu."""
    code = SCORE.format(src=str(ROOT / "src"), ref=str(REFERENCE), model=str(model),
                        threads=threads, windows=windows)  # fmt: skip
    argv = [sys.executable, "-c", code]
    if emulate:
        argv = ["qemu-x86_64", "-cpu", emulate, *argv]
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"scoring {model} failed: {out.stderr.strip()[-500:]}")
    return json.loads(lines[-1][len("RESULT ") :]), time.perf_counter() - start


CPUID_PROBE = (
    "from numpy._core._multiarray_umath import __cpu_features__ as f; "
    "print(' '.join(sorted(k.lower() for k, v in f.items() if v and k.startswith(('AVX', 'FMA')))))"
)


def cpuid_flags(emulate: str | None) -> str:
    """The AVX/FMA flags the CPU reports through CPUID, as numpy's dispatcher reads them (qemu-user
    passes the host's /proc/cpuinfo through, so only CPUID shows the emulated model)."""
    argv = [sys.executable, "-c", CPUID_PROBE]
    argv = ["qemu-x86_64", "-cpu", emulate, *argv] if emulate else argv
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkpipe-int8-kernels"))
    parser.add_argument("--emulate", default="EPYC-Rome")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=1, help="512-token windows scored (1-3)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not REFERENCE.is_file():
        parser.error(f"{REFERENCE} missing: run `dvc repro reference_logits` first")
    if shutil.which("qemu-x86_64") is None:
        parser.error("qemu-x86_64 not found: apt-get install qemu-user")
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.hostinfo import describe, host_fingerprint

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        model = build(name, args.work)
        native, native_s = score(model, args.threads, args.windows, None)
        emulated, emulated_s = score(model, args.threads, args.windows, args.emulate)
        rows.append({"variant": name, "label": VARIANTS[name][0], "native": native,
                     "emulated": emulated, "native_s": native_s,
                     "emulated_s": emulated_s})  # fmt: skip
        print(f"{name}: native PPL {native['ppl']:.2f} top-1 {native['top1_agreement']:.3f}; "
              f"AVX2 PPL {emulated['ppl']:.6g} top-1 {emulated['top1_agreement']:.3f} "
              f"({emulated_s:.0f} s emulated)", flush=True)  # fmt: skip
    print()
    print(f"native: {describe(host_fingerprint(args.threads))}; CPUID: {cpuid_flags(None)}")
    print(f"emulated: qemu-x86_64 -cpu {args.emulate}; CPUID: {cpuid_flags(args.emulate)}")
    print()
    print("| variant | PPL (native) | ΔPPL | top-1 | PPL (AVX2, no VNNI) | ΔPPL | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        n, e = r["native"], r["emulated"]
        print(f"| {r['label']} | {n['ppl']:.2f} | {n['ppl_delta_pct']:+.2f} % | "
              f"{n['top1_agreement']:.3f} | {e['ppl']:.6g} | {e['ppl_delta_pct']:+.4g} % | "
              f"{e['top1_agreement']:.3f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
