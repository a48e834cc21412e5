"""What scoring the LLM on the board costs, next to the host's evaluation, in ONE run.

Issue "accuracy on the device": the device evaluation of the default model must cost at most
1.5x the host evaluation, and on a host playing the board (same model, runner and CPU) its
figures must equal the host's (PPL within 0.1 %, top-1 agreement within 0.005).

Needs the main job's outputs (``models/llm/quantized``, ``data/eval/reference_logits.npz``).
Each round runs, in alternating order so machine noise hits both alike:

- ``host``: ``rkpipe.evaluate.llm.evaluate_against_reference`` (the evaluate stage's LLM part);
- ``device``: ``rkpipe.evaluate.device.evaluate_on_board`` through ``board=local``'s transport,
  i.e. the ``ort_llm`` runner in its own process, request in, rows out (what an SSH board runs).

    python benchmarks/device_eval.py [--rounds 3] [--threads 2] [--topk 32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models/llm/quantized"
REFERENCE = ROOT / "data/eval/reference_logits.npz"


def host_eval(threads: int) -> tuple[float, dict]:
    from rkpipe.evaluate.llm import evaluate_against_reference

    start = time.perf_counter()
    figures = evaluate_against_reference(REFERENCE, MODEL, threads=threads)
    return time.perf_counter() - start, figures


def device_eval(threads: int, topk: int) -> tuple[float, dict]:
    from rkpipe.board.deploy import run_runner
    from rkpipe.board.transport import LocalTransport
    from rkpipe.evaluate.device import evaluate_on_board

    transport = LocalTransport()

    def run_rows(request: str) -> list[dict]:
        argv = transport.runner_command("ort_llm") + [
            "--model", transport.model_path(MODEL), "--threads", str(threads),
            "--eval-request", request,
        ]  # fmt: skip
        return run_runner(transport, argv, 1200)

    start = time.perf_counter()
    figures, reason = evaluate_on_board(run_rows, transport.model_path, REFERENCE, topk)
    if reason:
        raise SystemExit(f"device evaluation failed: {reason}")
    return time.perf_counter() - start, figures


def cpu() -> tuple[str, str]:
    from rkpipe.hostinfo import host_fingerprint

    facts = host_fingerprint(threads=2)
    return facts["cpu"]["model"], " ".join(facts["cpu"].get("isa", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--topk", type=int, default=32)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"host": [], "device": []}
    figures: dict[str, dict] = {}
    for round_ in range(args.rounds):
        order = ("host", "device") if round_ % 2 == 0 else ("device", "host")
        for side in order:
            if side == "host":
                seconds, figures["host"] = host_eval(args.threads)
            else:
                seconds, figures["device"] = device_eval(args.threads, args.topk)
            times[side].append(seconds)
            print(f"round {round_ + 1}: {side} {seconds:.2f} s", flush=True)
    host, device = figures["host"], figures["device"]
    model, isa = cpu()
    ppl_gap = abs(device["device_ppl"] - host["ppl"]) / host["ppl"]
    top1_gap = abs(device["device_top1_agreement"] - host["top1_agreement"])
    ratio = statistics.median(times["device"]) / statistics.median(times["host"])
    print(f"\nCPU: {model} ({platform.machine()}); ISA: {isa}")
    host_s, device_s = statistics.median(times["host"]), statistics.median(times["device"])
    print(f"median of {args.rounds}: host {host_s:.2f} s, device {device_s:.2f} s, "
          f"ratio {ratio:.2f} (target <= 1.5)")  # fmt: skip
    print(f"PPL host {host['ppl']:.6f} device {device['device_ppl']:.6f}: "
          f"gap {100 * ppl_gap:.5f} % (target <= 0.1 %)")  # fmt: skip
    print(f"top-1 host {host['top1_agreement']:.5f} device {device['device_top1_agreement']:.5f}"
          f": gap {top1_gap:.5f} (target <= 0.005)")  # fmt: skip
    print(f"KLD host (full) {host['kld_mean']:.6f}, device (top-{args.topk} + rest) "
          f"{device['device_kld_mean']:.6f}")  # fmt: skip
    ok = ratio <= 1.5 and ppl_gap <= 1e-3 and top1_gap <= 0.005
    print("targets:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
