"""Harness overhead of the rkllm runner: measured TTFT and decode tok/s against known timings.

Builds the fake ``librkllmrt.so`` (tests/contract/fake_runtime, gcc) for each ABI, whose first
token comes ``--prefill-ms`` after ``rkllm_run`` starts and each next one ``--decode-ms`` later,
then runs ``rkllm_runner`` against it: locally, over a loopback sshd (Debian's openssh-server,
started here on 127.0.0.1 with throw-away keys) when one is installed, and through the fake
``llm_demo`` (log-table path). Prints the medians and measured/injected ratios.

    python benchmarks/board_harness.py [--repetitions 5] [--no-ssh]

Target: every ratio within 1 % of 1.000. Exits 1 when one is not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from rkpipe.board.deploy import parse_json_lines
from rkpipe.board.llm_demo import bench_llm_demo
from rkpipe.board.ssh import SshTransport
from rkpipe.board.transport import LocalTransport
from rkpipe.config.schema import BenchConfig
from rkpipe.engines import rkllm_runner

ROOT = Path(__file__).resolve().parents[1]
ABIS = ("1.2.0", "1.2", "1.3")
TARGET = 0.01


def load(path: Path) -> ModuleType:
    """A helper module of the test suite, by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def runner_args(args: argparse.Namespace, lib: str, model: str) -> list[str]:
    return [
        "--lib", lib, "--model", model, "--prompt-tokens", str(args.prompt_tokens),
        "--new-tokens", str(args.new_tokens), "--warmup", str(args.warmup),
        "--repetitions", str(args.repetitions),
    ]  # fmt: skip


def fake_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "FAKE_PREFILL_MS": str(args.prefill_ms),
        "FAKE_DECODE_MS_PER_TOKEN": str(args.decode_ms),
    }


def run_local(args: argparse.Namespace, lib: Path, model: Path) -> list[dict]:
    argv = [sys.executable, rkllm_runner.__file__, *runner_args(args, str(lib), str(model))]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=os.environ | fake_env(args), timeout=300
    )
    if out.returncode != 0:
        sys.exit(f"runner failed: {out.stderr[-2000:]}")
    return parse_json_lines(out.stdout)


def run_ssh(
    args: argparse.Namespace, transport: SshTransport, lib: Path, model: Path
) -> list[dict]:
    env = [f"{key}={value}" for key, value in fake_env(args).items()]
    argv = ["env", *env, *transport.runner_command("rkllm_runner")]
    argv += runner_args(args, str(lib), transport.model_path(model))
    result = transport.run(argv, 300)
    if result.returncode != 0:
        sys.exit(f"runner over ssh failed: {result.stderr[-2000:]}")
    return parse_json_lines(result.stdout)


def report(label: str, rows: list[dict], args: argparse.Namespace) -> bool:
    """Print medians and ratios of one configuration; True when within the target."""
    measured = [r for r in rows if not r["warmup"]]
    ttft = statistics.median(r["ttft_ms"] for r in measured)
    decode = statistics.median(r["decode_tok_per_s"] for r in measured)
    ratios = {"ttft": ttft / args.prefill_ms, "decode": decode / (1e3 / args.decode_ms)}
    overhead = [r["ttft_ms"] - r["rt_prefill_ms"] for r in measured if "rt_prefill_ms" in r]
    extra = f"  harness-vs-runtime TTFT {statistics.median(overhead):+.3f} ms" if overhead else ""
    ok = all(abs(v - 1) <= TARGET for v in ratios.values())
    print(
        f"{label:<24} TTFT {ttft:8.2f} ms (x{ratios['ttft']:.4f})  "
        f"decode {decode:7.2f} tok/s (x{ratios['decode']:.4f})  "
        f"[{rows[0].get('perf_source')}]{extra}  {'ok' if ok else 'MISS'}"
    )
    return ok


def ssh_section(args: argparse.Namespace, work: Path, libs: dict, model: Path) -> list[bool]:
    fixture = load(ROOT / "tests" / "integration" / "board_fixture.py")
    try:
        sshd = fixture.start_sshd(work / "sshd")
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"loopback sshd unavailable ({exc}): ssh rows skipped")
        return []
    try:
        known = work / "known_hosts"
        known.write_text(sshd.known_hosts_line())
        board = sshd.board(known, work / "board workdir")
        with SshTransport(board, python=sys.executable) as transport:
            return [
                report(f"ssh  abi {abi}", run_ssh(args, transport, libs[abi], model), args)
                for abi in ABIS
            ]
    finally:
        fixture.stop_sshd(sshd)


def llm_demo_section(args: argparse.Namespace, build: ModuleType, libs: dict, model: Path) -> bool:
    demo = build.build_llm_demo(libs["1.2"], "1.2")
    bench = BenchConfig(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        repetitions=args.repetitions,
    )
    os.environ.update(fake_env(args))
    result = bench_llm_demo(
        LocalTransport(), demo=str(demo), model=str(model), bench=bench,
        max_context_len=1024, timeout=300,
    )  # fmt: skip
    return report("llm_demo (log table)", result.samples, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill-ms", type=float, default=200.0)
    parser.add_argument("--decode-ms", type=float, default=20.0)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--no-ssh", action="store_true", help="skip the loopback sshd rows")
    args = parser.parse_args()
    build = load(ROOT / "tests" / "contract" / "fake_runtime" / "build.py")
    with tempfile.TemporaryDirectory(prefix="board-harness-") as tmp:
        work = Path(tmp)
        libs = {abi: build.build_fake_runtime(work / abi.replace(".", "_"), abi) for abi in ABIS}
        model = work / "fake.rkllm"
        model.write_bytes(b"fake model")
        print(f"injected: prefill {args.prefill_ms} ms, {args.decode_ms} ms/token; "
              f"{args.new_tokens} new tokens, median of {args.repetitions} runs")  # fmt: skip
        results = [
            report(f"local abi {abi}", run_local(args, libs[abi], model), args) for abi in ABIS
        ]
        results.append(llm_demo_section(args, build, libs, model))
        if not args.no_ssh:
            results += ssh_section(args, work, libs, model)
    print(json.dumps({"within_target": all(results), "target": TARGET}))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
