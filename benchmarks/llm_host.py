"""LLM on this host, side by side in ONE run: fp32 ONNX, every onnxruntime scheme, llama.cpp.

    python benchmarks/llm_host.py [--variants fp32,gguf_exact,...] [--rounds 5] [--threads 2]
        [--work /tmp/rkpipe-llm-bench] [--rebuild] [--no-eval] [--no-speed] [--json out.json]
        [--docs docs/benchmarks.md]

Needs the default pipeline's artifacts (``models/llm/float``, ``models/llm/onnx_fp32``,
``data/calib/calibration.json``, ``data/eval/eval.txt``), ``llama-cpp-python`` (the ``bench``
extra) for the llama.cpp column and ``.venv-genai`` (``bash scripts/setup_genai.sh``) for the
``genai_*`` variants; a variant whose tool is missing is reported as skipped.

1. Builds each quantized variant with the pipeline's own backend into ``--work`` (kept between
   runs; ``--rebuild`` redoes them).
2. Speed: one worker process per variant (its own peak RSS), all loaded at once; every round
   runs each variant once, in a rotating order, so machine noise hits all alike: TTFT of a
   128-token prompt and decode tok/s over 64 greedy tokens (medians of ``--rounds``).
3. Accuracy against the fp32 ONNX logits (computed once), on ``data/eval/eval.txt`` in
   512-token windows: PPL, mean KLD and top-1 agreement; llama.cpp is scored on the same ids.

Prints a table with the ratios vs llama.cpp (decode x, TTFT x) and vs the fp32 ONNX size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLOAT_DIR = ROOT / "models/llm/float"
FP32_DIR = ROOT / "models/llm/onnx_fp32"
CALIB = ROOT / "data/calib/calibration.json"
EVAL_TEXT = ROOT / "data/eval/eval.txt"
HEADING = "## LLM host (issue 5)"
WORKER_TIMEOUT_S = 600

log = logging.getLogger("llm_host")


@dataclass
class Variant:
    """One column of the comparison: how to build it and what to call it."""

    name: str
    label: str
    kind: str = "ort"  # ort | llama
    scheme: str | None = None  # quant.ort.scheme; None: an existing directory
    dtype: str = "int8"
    options: dict[str, Any] = field(default_factory=dict)


VARIANTS = [
    Variant("fp32", "fp32 ONNX (optimum export)"),
    Variant("int8_dynamic", "int8 dynamic QInt8 per-tensor (seed)", scheme="dynamic"),
    Variant(
        "int8_dynamic_emb8",
        "int8 dynamic per-channel + 8-bit shared embedding",
        scheme="dynamic",
        options={"per_channel": True, "embedding_bits": 8, "accuracy_level": 4},
    ),
    Variant(
        "int8_static_qdq",
        "int8 static QDQ U8S8 (8 calib records) + 8-bit embedding",
        scheme="static_qdq",
        options={
            "per_channel": True,
            "embedding_bits": 8,
            "accuracy_level": 4,
            "activation_type": "QUInt8",
        },
    ),
    Variant(
        "int8_nbits",
        "8-bit MatMulNBits b32 + 8-bit embedding",
        scheme="matmul_nbits",
        options={"embedding_bits": 8, "accuracy_level": 4},
    ),
    Variant(
        "int4_b32",
        "int4 MatMulNBits b32",
        scheme="matmul_nbits",
        dtype="int4",
        options={"block_size": 32, "accuracy_level": 4},
    ),
    Variant(
        "int4_b64",
        "int4 MatMulNBits b64",
        scheme="matmul_nbits",
        dtype="int4",
        options={"block_size": 64, "accuracy_level": 4},
    ),
    Variant(
        "int4_b128",
        "int4 MatMulNBits b128",
        scheme="matmul_nbits",
        dtype="int4",
        options={"block_size": 128, "accuracy_level": 4},
    ),
    Variant(
        "int4_b32_emb4",
        "int4 MatMulNBits b32 + 4-bit shared embedding",
        scheme="matmul_nbits",
        dtype="int4",
        options={"block_size": 32, "accuracy_level": 4, "embedding_bits": 4},
    ),
    Variant(
        "gguf_exact",
        "GGUF Q4_1 blocks exact, optimum graph",
        scheme="gguf_exact",
        dtype="int4",
        options={"accuracy_level": 0, "accuracy_level_8bit": 4},
    ),
    Variant(
        "genai_int4",
        "genai builder int4 (re-quantized)",
        scheme="genai_int4",
        dtype="int4",
        options={"accuracy_level": 4},
    ),
    Variant(
        "genai_int8",
        "genai builder int8",
        scheme="genai_int8",
        dtype="int8",
        options={"accuracy_level": 4},
    ),
    Variant(
        "genai_gguf_exact",
        "genai builder + GGUF Q4_1 exact (4-bit fp32 compute)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 0, "accuracy_level_8bit": 4},
    ),
    Variant(
        "genai_gguf_exact_acc4",
        "genai builder + GGUF Q4_1 exact (int8 activations)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 4, "accuracy_level_8bit": 4},
    ),
    Variant(
        "genai_gguf_folded",
        "genai builder + GGUF Q4_1, residual folded as 4-bit K blocks (4-bit fp32 compute)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 0, "accuracy_level_8bit": 4, "q4_1_mode": "folded"},
    ),
    Variant(
        "genai_gguf_folded_acc4",
        "genai builder + GGUF Q4_1, residual folded as 4-bit K blocks (int8 activations)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 4, "accuracy_level_8bit": 4, "q4_1_mode": "folded"},
    ),
    Variant(
        "genai_gguf_folded_split",
        "genai builder + GGUF Q4_1 folded, prefill fp32 compute / "
        "decode int8 activations (If branch)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={
            "accuracy_level": 0,
            "accuracy_level_8bit": 4,
            "q4_1_mode": "folded",
            "decode_accuracy_level": 4,
        },
    ),
    Variant(
        "genai_gguf_exact_split",
        "genai builder + GGUF Q4_1 exact, prefill fp32 compute / "
        "decode int8 activations (If branch)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 0, "accuracy_level_8bit": 4, "decode_accuracy_level": 4},
    ),
    Variant(
        "genai_gguf_mse",
        "genai builder + GGUF Q4_1 re-encoded without residual (MSE)",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={"accuracy_level": 4, "accuracy_level_8bit": 4, "q4_1_mode": "mse"},
    ),
    Variant(
        "genai_gguf_folded_emb4",
        "genai builder + GGUF Q4_1 folded + 4-bit MSE embedding",
        scheme="genai_gguf_exact",
        dtype="int4",
        options={
            "accuracy_level": 4,
            "accuracy_level_8bit": 4,
            "q4_1_mode": "folded",
            "embedding_bits": 4,
        },
    ),
    Variant("llama_cpp", "llama.cpp on the GGUF (llama-cpp-python)", kind="llama"),
]


# ---------------------------------------------------------------------------------------------
# Workers: one process per variant, JSON lines on stdin/stdout
# ---------------------------------------------------------------------------------------------


def _vm_hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


class _LlamaRunner:
    """Greedy generation with llama-cpp-python, timed like the ORT engine."""

    def __init__(self, path: str, threads: int, n_ctx: int = 512, logits_all: bool = False):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )

    def generate(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        import numpy as np

        llm = self.llm
        start = time.perf_counter()
        llm.reset()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        end = time.perf_counter()
        return {
            "ttft_ms": (first - start) * 1e3,
            "decode_tok_per_s": (new_tokens - 1) / (end - first),
        }

    def logits(self, ids: list[int]) -> Any:
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)


def worker(kind: str, path: str, threads: int) -> None:
    """Serve ``{"prompt": [...], "new": n}`` requests with one model; answer timings + RSS."""
    start = time.perf_counter()
    if kind == "llama":
        runner: Any = _LlamaRunner(path, threads)
        generate = runner.generate
    else:
        sys.path.insert(0, str(ROOT / "src"))
        from rkpipe.engines.ort_llm import OrtCausalLM

        model = OrtCausalLM(path, threads=threads)
        generate = model.generate
    print(json.dumps({"ready": True, "load_ms": (time.perf_counter() - start) * 1e3}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        result = generate(request["prompt"], request["new"])
        out = {k: result[k] for k in ("ttft_ms", "decode_tok_per_s")}
        out["peak_rss_mb"] = _vm_hwm_mb()
        print(json.dumps(out), flush=True)


class WorkerProcess:
    """The parent's handle on one worker."""

    def __init__(self, variant: Variant, path: Path, threads: int) -> None:
        self.variant = variant
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            variant.kind,
            str(path),
            "--threads",
            str(threads),
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.load_ms = self._read()["load_ms"]

    def _read(self) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], WORKER_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"worker for {self.variant.name} died or timed out")
        return json.loads(line)

    def run(self, prompt: list[int], new_tokens: int) -> dict[str, float]:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "new": new_tokens}) + "\n")
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


# ---------------------------------------------------------------------------------------------
# Build, speed, accuracy
# ---------------------------------------------------------------------------------------------


def gguf_path() -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.backends.ort.gguf_exact import gguf_path_from_manifest

    return gguf_path_from_manifest(FLOAT_DIR)


def model_size_mb(variant: Variant, path: Path) -> float:
    """Bytes of the model itself (graph + weights, not the tokenizer) in MB."""
    if variant.kind == "llama":
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("model.onnx")) / 1e6


def build(variant: Variant, work: Path, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The model path of ``variant`` (building it if needed) and its build metrics."""
    if variant.kind == "llama":
        return gguf_path(), {}
    if variant.scheme is None:
        return FP32_DIR, {}
    out = work / variant.name
    metrics_file = work / f"{variant.name}.build.json"
    recipe = {"scheme": variant.scheme, "dtype": variant.dtype, **variant.options}
    if out.is_dir() and metrics_file.is_file() and not rebuild:
        cached = json.loads(metrics_file.read_text())
        if cached.pop("recipe", None) == recipe:
            return out, cached
    sys.path.insert(0, str(ROOT / "src"))
    import shutil

    from rkpipe.backends import get_backend
    from rkpipe.backends.base import QuantizeRequest
    from rkpipe.config.schema import QuantConfig

    shutil.rmtree(out, ignore_errors=True)
    quant = QuantConfig(dtype=variant.dtype)
    quant.ort.scheme = variant.scheme
    for key, value in variant.options.items():
        setattr(quant.ort, key, value)
    request = QuantizeRequest(FLOAT_DIR, FP32_DIR, CALIB, quant, "host", out)
    log.info("building %s (%s %s) ...", variant.name, variant.scheme, variant.dtype)
    result = get_backend("onnxruntime").quantize(request)
    keep = ("quantize_s", "quantize_peak_rss_mb", "node_count")
    metrics = {k: result.metrics[k] for k in keep if k in result.metrics}
    metrics_file.write_text(json.dumps({**metrics, "recipe": recipe}))
    return out, metrics


def available(variant: Variant) -> str | None:
    """Why ``variant`` cannot run here (None if it can)."""
    if variant.kind == "llama":
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            return "llama-cpp-python not installed (pip install -e '.[bench]')"
    if variant.scheme and variant.scheme.startswith("genai"):
        sys.path.insert(0, str(ROOT / "src"))
        from rkpipe.backends.ort.genai import genai_python

        try:
            genai_python(None)
        except Exception as exc:  # ConfigError with the setup command
            return str(exc).split(";")[0]
    return None


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval`` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return idle, sum(fields)

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_busy: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until other jobs leave the CPUs mostly idle; return the
    busy fraction seen last. The benchmark shares the machine: with 2 threads per variant,
    a second job makes onnxruntime's and llama.cpp's spinning threads collapse."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy(0.5)
    while busy > max_busy and time.monotonic() < deadline:
        time.sleep(2)
        busy = cpu_busy(0.5)
    return busy


def measure_speed(
    workers: list[WorkerProcess],
    prompt: list[int],
    new_tokens: int,
    warmup: int,
    rounds: int,
    max_busy: float = 1.0,
    max_wait_s: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Medians per variant over ``rounds`` rounds, each round in a rotated order."""
    samples: dict[str, list[dict[str, float]]] = {w.variant.name: [] for w in workers}
    for r in range(warmup + rounds):
        busy_seen: list[float] = []
        order = workers[r % len(workers) :] + workers[: r % len(workers)]
        for w in order:
            if max_wait_s:  # every run starts on idle CPUs (as far as other jobs allow)
                busy_seen.append(wait_quiet(max_busy, max_wait_s))
            out = w.run(prompt, new_tokens)
            if r >= warmup:
                samples[w.variant.name].append(out)
        log.info(
            "speed round %d/%d done (CPU busy before runs: max %.0f %%)",
            r + 1,
            warmup + rounds,
            100 * max(busy_seen or [0.0]),
        )
    result = {}
    for name, runs in samples.items():
        result[name] = {
            "ttft_ms": statistics.median(s["ttft_ms"] for s in runs),
            "decode_tok_per_s": statistics.median(s["decode_tok_per_s"] for s in runs),
            "decode_min": min(s["decode_tok_per_s"] for s in runs),
            "decode_max": max(s["decode_tok_per_s"] for s in runs),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in runs),
        }
    return result


def measure_accuracy(
    variants: list[tuple[Variant, Path]], threads: int, seqlen: int
) -> dict[str, dict[str, float]]:
    """PPL / KLD / top-1 of each variant against the fp32 ONNX logits (computed once)."""
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.evaluate.llm import eval_windows, load_onnx_llm, reference_logits, score_logits

    windows = eval_windows(EVAL_TEXT.read_text(encoding="utf-8"), FLOAT_DIR, seqlen)
    ref_model = load_onnx_llm(FP32_DIR, threads)
    reference = reference_logits(ref_model.logits, windows)
    del ref_model
    results = {}
    for variant, path in variants:
        start = time.perf_counter()
        if variant.kind == "llama":
            runner = _LlamaRunner(str(path), threads, n_ctx=seqlen, logits_all=True)
            logits_fn = runner.logits
        else:
            logits_fn = load_onnx_llm(path, threads).logits
        results[variant.name] = score_logits(reference, windows, logits_fn, variant.name)
        log.info(
            "accuracy %s: ppl %.3f (%.1f s)",
            variant.name,
            results[variant.name]["ppl"],
            time.perf_counter() - start,
        )
        del logits_fn
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


COLUMNS = (
    "variant",
    "size MB",
    "x fp32 size",
    "TTFT ms",
    "TTFT x llama.cpp",
    "decode tok/s",
    "decode x llama.cpp",
    "peak RSS MB",
    "PPL",
    "dPPL %",
    "KLD",
    "top-1",
    "nodes",
)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Formatted cells (COLUMNS order) with the ratios vs llama.cpp and vs fp32 size."""
    by_name = {r["name"]: r for r in rows}
    llama = by_name.get("llama_cpp", {})
    fp32_size = by_name.get("fp32", {}).get("size_mb")
    out = []
    for r in rows:

        def ratio(key: str, base: dict | float | None, r: dict = r) -> str:
            value = r.get(key)
            ref = base.get(key) if isinstance(base, dict) else base
            return f"{value / ref:.2f}x" if value and ref else "-"

        def num(key: str, fmt: str, r: dict = r) -> str:
            return format(r[key], fmt) if r.get(key) is not None else "-"

        out.append(
            [
                r["label"],
                num("size_mb", ".1f"),
                ratio("size_mb", fp32_size),
                num("ttft_ms", ".0f"),
                ratio("ttft_ms", llama),
                num("decode_tok_per_s", ".0f"),
                ratio("decode_tok_per_s", llama),
                num("peak_rss_mb", ".0f"),
                num("ppl", ".3f"),
                num("ppl_delta_pct", "+.2f"),
                num("kld_mean", ".4f"),
                num("top1_agreement", ".3f"),
                num("node_count", ".0f"),
            ]
        )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    cells = table_rows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def docs_section(table: str, command: str, meta: dict[str, Any]) -> str:
    return "\n".join(
        [
            HEADING,
            "",
            f"Measured {meta['date']} on this host ({meta['cpu']}, {meta['threads']} threads, "
            f"load average {meta['load']:.1f} at start, shared with other jobs). "
            f"TTFT: {meta['prompt_tokens']}-token prompt; decode: {meta['new_tokens']} greedy "
            f"tokens; medians of {meta['rounds']} alternating rounds. PPL/KLD/top-1 vs the fp32 "
            f"ONNX logits on data/eval/eval.txt ({meta['eval_tokens']} predicted tokens, "
            "512-token windows). Ratios: vs llama.cpp in the same run, vs the fp32 ONNX size.",
            "",
            "```",
            command,
            "```",
            "",
            table,
            "",
        ]
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkpipe-llm-bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each speed round wait up to this many seconds for the "
        "CPUs to be at most --max-busy busy (0: do not wait)",
    )
    parser.add_argument("--max-busy", type=float, default=0.15)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--docs", type=Path, help="append the table to this markdown file")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.threads)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    command = "python benchmarks/llm_host.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    return run(args, command.strip())


def run(args: argparse.Namespace, command: str) -> int:
    names = args.variants.split(",")
    chosen = [v for v in VARIANTS if v.name in names]
    unknown = set(names) - {v.name for v in chosen}
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; known: {[v.name for v in VARIANTS]}")
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    built: list[tuple[Variant, Path]] = []
    rows: dict[str, dict[str, Any]] = {}
    for variant in chosen:
        reason = available(variant)
        if reason:
            log.warning("skipping %s: %s", variant.name, reason)
            continue
        path, build_metrics = build(variant, args.work, args.rebuild)
        built.append((variant, path))
        rows[variant.name] = {
            "name": variant.name,
            "label": variant.label,
            "size_mb": model_size_mb(variant, path),
            **build_metrics,
        }
        if variant.kind == "ort":
            rows[variant.name]["node_count"] = _node_count(path)
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.engines.ort_llm import benchmark_prompt

    prompt = benchmark_prompt(args.prompt_tokens, 49152)
    if not args.no_speed:
        workers = [WorkerProcess(v, p, args.threads) for v, p in built]
        try:
            speed = measure_speed(
                workers,
                prompt,
                args.new_tokens,
                args.warmup,
                args.rounds,
                args.max_busy,
                args.quiet_wait,
            )
        finally:
            for w in workers:
                w.close()
        for name, values in speed.items():
            rows[name].update(values)
    eval_tokens = 0
    if not args.no_eval:
        for name, values in measure_accuracy(built, args.threads, args.seqlen).items():
            rows[name].update(values)
            eval_tokens = int(values["eval_tokens"])
    ordered = [rows[v.name] for v, _ in built]
    table = markdown(ordered)
    print(table)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_name(),
        "threads": args.threads,
        "load": load,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "eval_tokens": eval_tokens,
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": ordered}, indent=1))
    if args.docs:
        new_file = not args.docs.exists()
        with open(args.docs, "a", encoding="utf-8") as handle:
            handle.write(
                ("# Benchmarks\n" if new_file else "") + "\n" + docs_section(table, command, meta)
            )
    return 0


def _node_count(path: Path) -> int:
    import onnx

    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.backends.ort.decode_split import branch_nodes

    # a decode/prefill split graph: the nodes of one branch (the prefill one)
    return len(branch_nodes(onnx.load(str(path / "model.onnx"), load_external_data=False).graph))


if __name__ == "__main__":
    sys.exit(main())
