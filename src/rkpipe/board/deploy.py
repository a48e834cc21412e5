"""Deploy models to a board and run the benchmark runners there.

The runners are the self-contained engines in :mod:`rkpipe.engines` (stdlib,
numpy and onnxruntime only), run as separate processes so that each reports its
own peak RSS and the host's imports do not distort it. They print one JSON
object per line (warm-ups flagged), which this module collects and summarises.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rkpipe.bench.stats import summarize_samples
from rkpipe.config.schema import BenchConfig, BoardConfig
from rkpipe.errors import BoardError

log = logging.getLogger(__name__)

LLM_KEYS = ("ttft_ms", "prefill_ms", "prefill_tok_per_s", "decode_ms", "decode_tok_per_s")
ASR_KEYS = ("rtf", "encoder_ms", "decoder_ms", "total_ms")


class Transport(Protocol):
    """How commands reach a board."""

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the board and return its output (text)."""
        ...

    def runner_command(self, engine: str) -> list[str]:
        """The argv prefix that starts the runner ``engine`` (e.g. ``ort_llm``) on the board."""
        ...

    def model_path(self, local: Path) -> str:
        """Where the board sees the deployed copy of ``local``."""
        ...


class LocalTransport:
    """The host is the board: run the engines from the installed package, no copy needed."""

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BoardError(f"runner timed out after {timeout:.0f} s: {' '.join(argv)}") from None

    def runner_command(self, engine: str) -> list[str]:
        return [sys.executable, "-m", f"rkpipe.engines.{engine}"]

    def model_path(self, local: Path) -> str:
        return str(local.resolve())


def make_transport(board: BoardConfig) -> Transport:
    """The transport for ``board.transport`` (``local``, ``ssh`` or ``adb``)."""
    if board.transport == "ssh":
        from rkpipe.board.ssh import SshTransport

        return SshTransport(board, python=board.python)
    if board.transport == "adb":
        from rkpipe.board.adb import AdbTransport

        return AdbTransport(board, python=board.python)
    if board.transport == "local":
        return LocalTransport()
    raise BoardError(f"board.transport={board.transport!r}; available: local, ssh, adb")


def check_board(cfg: Any, transport: Transport) -> dict[str, Any]:
    """Preflight a remote board for this variant's models (SoC, driver, runtime, disk, memory)."""
    from rkpipe.board.preflight import preflight
    from rkpipe.io import dir_size_mb

    models = Path(cfg.paths.models_dir)
    rkllm = cfg.quant.backend == "rkllm"
    size = dir_size_mb(models / "llm" / "quantized") + dir_size_mb(models / "asr" / "quantized")
    return preflight(
        transport,
        model_platform=cfg.platform.name if rkllm else None,
        toolkit_version=_toolkit_version(models / "llm" / "quantized") if rkllm else None,
        model_size_mb=size,
        board_root=cfg.board.root,
        workdir=cfg.board.workdir,
        timeout=min(cfg.board.timeout_s, 120.0),
    )


def _toolkit_version(quantized: Path) -> str | None:
    manifest = quantized / "quant_manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text(encoding="utf-8")).get("toolkit_version")


def parse_json_lines(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects a runner printed, one per line; other lines are ignored."""
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            rows.append(json.loads(line))
    return rows


def run_runner(transport: Transport, argv: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    """Run a runner and return its JSON rows; a failure raises BoardError with stderr's tail."""
    log.info("running %s", " ".join(argv[:4]))
    result = transport.run(argv, timeout)
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise BoardError(f"runner exited with {result.returncode}: {tail}")
    rows = parse_json_lines(result.stdout)
    if not rows:
        raise BoardError(f"runner printed no results: {' '.join(argv[:4])}")
    return rows


@dataclass
class BenchResult:
    """Raw samples and their summary metrics (unit-suffixed names)."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    # What preflight read off the board (SoC, driver and runtime versions, free disk ...).
    facts: dict[str, Any] = field(default_factory=dict)


def bench_llm(
    transport: Transport, model_dir: Path, bench: BenchConfig, timeout: float
) -> BenchResult:
    """TTFT, prefill/decode tokens/s and peak RSS of the ONNX LLM (Rockchip's methodology)."""
    argv = transport.runner_command("ort_llm") + [
        "--model", transport.model_path(model_dir),
        "--prompt-tokens", str(bench.prompt_tokens),
        "--new-tokens", str(bench.new_tokens),
        "--warmup", str(bench.warmup),
        "--repetitions", str(bench.repetitions),
        "--threads", str(bench.threads),
    ]  # fmt: skip
    rows = run_runner(transport, argv, timeout)
    metrics = summarize_samples(rows, LLM_KEYS)
    metrics["peak_rss_mb"] = max(float(r.get("peak_rss_mb", 0.0)) for r in rows)
    return BenchResult(rows, metrics)


def bench_asr(
    transport: Transport,
    model_dir: Path,
    audio: Sequence[Path],
    bench: BenchConfig,
    max_new_tokens: int,
    timeout: float,
) -> BenchResult:
    """Real-time factor, encoder/decoder time split and peak RSS of the ONNX ASR model."""
    from rkpipe.asr.engine import engine_name

    argv = transport.runner_command(engine_name(model_dir)) + [
        "--model", transport.model_path(model_dir),
        "--audio", *[transport.model_path(p) for p in audio],
        "--warmup", str(min(bench.warmup, 1)),
        "--repetitions", str(bench.repetitions),
        "--threads", str(bench.threads),
        "--max-new-tokens", str(max_new_tokens),
    ]  # fmt: skip
    rows = run_runner(transport, argv, timeout)
    metrics = summarize_samples(rows, ASR_KEYS, prefix="asr_")
    metrics["asr_peak_rss_mb"] = max(float(r.get("peak_rss_mb", 0.0)) for r in rows)
    return BenchResult(rows, metrics)


def _testset_audio(testset_dir: Path) -> list[Path]:
    clips = sorted(testset_dir.glob("*.wav"))
    if not clips:
        raise BoardError(f"no .wav clips in {testset_dir}; run the asr_testset stage first")
    return clips


def deploy_and_bench(cfg: Any) -> BenchResult:
    """Benchmark the variant's quantized LLM and ASR model on ``cfg.board``.

    Returns the raw samples (each tagged with board and model) and the summary
    metrics (``ttft_ms``, ``decode_tok_per_s``, ``peak_rss_mb``, ``asr_rtf``, ...).
    Raises BoardError when a runner fails or the board cannot be reached.
    """
    transport = make_transport(cfg.board)
    facts = {} if cfg.board.transport == "local" else check_board(cfg, transport)
    models = Path(cfg.paths.models_dir)
    testset = Path(cfg.paths.data_dir) / "asr" / "testset"
    llm = bench_llm(transport, models / "llm" / "quantized", cfg.bench, cfg.board.timeout_s)
    asr = bench_asr(
        transport,
        models / "asr" / "quantized",
        _testset_audio(testset),
        cfg.bench,
        cfg.asr.max_new_tokens,
        cfg.board.timeout_s,
    )
    context = {"board": cfg.board.name, "platform": cfg.platform.name} | {
        f"board_{k}": v for k, v in facts.items() if isinstance(v, (str, int, float))
    }
    samples = [row | context | {"model": cfg.model.name} for row in llm.samples]
    samples += [row | context | {"model": cfg.asr.name} for row in asr.samples]
    return BenchResult(samples, llm.metrics | asr.metrics, facts)
