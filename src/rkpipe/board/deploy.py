"""Deploy models to a board and run the benchmark runners there.

The runners are the self-contained engines in :mod:`rkpipe.engines` (stdlib,
numpy and onnxruntime only), run as separate processes so that each reports its
own peak RSS and the host's imports do not distort it. They print one JSON
object per line (warm-ups flagged), which this module collects and summarises.

The LLM runner is the one the backend named in ``quant_manifest.json`` (``run_with``,
:mod:`rkpipe.quant_manifest`): ``ort_llm`` for an onnxruntime model, ``rkllm_runner`` (ctypes
over ``board.rkllm_lib``) for an ``.rkllm`` model. Both report the
same keys, so the metrics have the same names whichever runtime produced them; each sample
says which one it was (``runtime``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.board.transport import Transport, make_transport
from rkpipe.config.schema import BenchConfig, BoardConfig, PipelineConfig
from rkpipe.errors import BoardError
from rkpipe.hostinfo import provenance
from rkpipe.measure.stats import summarize_samples
from rkpipe.progress import step
from rkpipe.quant_manifest import RunWith, run_with

log = logging.getLogger(__name__)

DEFAULT_RKLLM_LIB = BoardConfig.rkllm_lib

LLM_KEYS = ("ttft_ms", "prefill_ms", "prefill_tok_per_s", "decode_ms", "decode_tok_per_s")
# What librkllmrt reports about itself (RKLLMPerfStat or its log table), next to the harness's
# own clock: a large gap between the two means the measurement, not the model, is off.
RKLLM_RUNTIME_KEYS = ("rt_prefill_ms", "rt_prefill_tok_per_s", "rt_decode_tok_per_s")
ASR_KEYS = ("rtf", "encoder_ms", "decoder_ms", "total_ms")
# The metric deploy_bench records instead of the LLM figures when it could not measure them.
LLM_SKIPPED = "llm_bench_skipped"


def check_board(cfg: PipelineConfig, transport: Transport) -> dict[str, Any]:
    """Preflight a remote board for this variant's models (SoC, driver, runtime, disk, memory),
    and check its SoC against ``board.platform`` whatever the runtime (an onnxruntime model
    runs on any SoC, but its figures would be filed under the wrong board)."""
    from rkpipe.board.preflight import check_board_platform, preflight
    from rkpipe.io import dir_size_mb

    layout = cfg.layout
    facts = run_with(layout.llm.quantized)
    size = dir_size_mb(layout.llm.quantized) + dir_size_mb(layout.asr.quantized)
    board_facts = preflight(
        transport,
        model_platform=facts.platform,
        toolkit_version=facts.toolkit_version,
        model_size_mb=size,
        board_root=cfg.board.root,
        workdir=cfg.board.workdir,
        runtime_lib=cfg.board.rkllm_lib,
        timeout=min(cfg.board.timeout_s, 120.0),
    )
    check_board_platform(cfg.board, board_facts["soc"], board_facts["compatible"])
    return board_facts


def runner_model(quantized: Path, facts: RunWith) -> Path:
    """The file (or directory) the runner loads: ``run_with.model`` inside ``quantized``.

    Raises:
        BoardError: it is not there (the quantize_llm stage did not write it).
    """
    model = quantized / facts.model
    if not model.exists():
        raise BoardError(f"no {facts.model} in {quantized}: run the quantize_llm stage first")
    return model


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
    # Where and when it was measured (rkpipe.hostinfo.provenance).
    provenance: dict[str, str] = field(default_factory=dict)
    # Run tags: why a figure is missing (device_eval.missing), and the like.
    notes: dict[str, str] = field(default_factory=dict)


def llm_runner_argv(
    transport: Transport,
    model_dir: Path,
    bench: BenchConfig,
    *,
    rkllm_lib: str = DEFAULT_RKLLM_LIB,
) -> list[str]:
    """The argv that benchmarks the quantized LLM in ``model_dir`` with the runner its
    manifest names (``run_with``).

    onnxruntime: ``ort_llm --model <dir>``. rkllm: ``rkllm_runner --lib <rkllm_lib> --model
    <the .rkllm file>``; ``rkllm_lib`` is a path on the board, never pushed (it must match the
    board's NPU driver, so it is installed there, not shipped with each model). Getting the argv
    pushes the runner and the model to a remote board.

    Raises:
        ArtifactError: no manifest, or one without ``run_with``.
        BoardError: the model file the manifest names is not in ``model_dir``.
    """
    return _runner_argv(transport, Path(model_dir), run_with(model_dir), bench, rkllm_lib)


def lora_adapter(model_dir: Path, facts: RunWith) -> Path | None:
    """The LoRA adapter rkllm-toolkit exports beside the model for the ``_rN`` algorithms
    (``model_lora.rkllm`` next to ``model.rkllm``), or None. The 1.3.0 guide has the runtime
    load both (section 3.2.8): without it the variant is not the one that was converted."""
    if not facts.needs_runtime_lib:
        return None
    model = Path(facts.model)
    path = Path(model_dir) / f"{model.stem}_lora{model.suffix}"
    return path if path.is_file() else None


def _runner_argv(
    transport: Transport, model_dir: Path, facts: RunWith, bench: BenchConfig, rkllm_lib: str,
    rkllm_abi: str = "auto", *, with_lora: bool = True,
) -> list[str]:  # fmt: skip
    target = ["--model", transport.model_path(runner_model(model_dir, facts))]
    if facts.needs_runtime_lib:
        target = ["--lib", rkllm_lib, "--abi", rkllm_abi, *target]
    adapter = lora_adapter(model_dir, facts) if with_lora else None
    if adapter:  # pushed with the model, loaded with rkllm_load_lora, selected on every run
        target += ["--lora", transport.model_path(adapter)]
    return transport.runner_command(facts.runner) + target + [
        "--prompt-tokens", str(bench.prompt_tokens),
        "--new-tokens", str(bench.new_tokens),
        "--warmup", str(bench.warmup),
        "--repetitions", str(bench.repetitions),
        "--threads", str(bench.threads),
    ]  # fmt: skip


def bench_llm(
    transport: Transport,
    model_dir: Path,
    bench: BenchConfig,
    timeout: float,
    *,
    rkllm_lib: str = DEFAULT_RKLLM_LIB,
    rkllm_abi: str = "auto",
) -> BenchResult:
    """TTFT, prefill/decode tokens/s and peak RSS of the quantized LLM (Rockchip's
    methodology), measured by the runner its manifest names (see :func:`llm_runner_argv`).

    The metrics have the same names for every runtime; an rkllm run adds the runtime's
    self-reported ``rt_*`` figures. Each sample carries ``runtime`` (``onnxruntime``/``rkllm``).
    """
    facts = run_with(model_dir)  # read once: it names the runner and tags the samples
    argv = _runner_argv(transport, Path(model_dir), facts, bench, rkllm_lib, rkllm_abi)
    what = f"benchmarking the LLM: {bench.warmup} warm-up + {bench.repetitions} repetitions"
    with step(what):
        rows = [row | {"runtime": facts.runtime} for row in run_runner(transport, argv, timeout)]
    metrics = summarize_samples(rows, LLM_KEYS)
    metrics["peak_rss_mb"] = max(float(r.get("peak_rss_mb", 0.0)) for r in rows)
    if any(key in row for row in rows for key in RKLLM_RUNTIME_KEYS):  # the runtime's own
        metrics |= summarize_samples(rows, RKLLM_RUNTIME_KEYS)
        memory = [float(r["rt_memory_mb"]) for r in rows if r.get("rt_memory_mb") is not None]
        if memory:
            metrics["rt_memory_mb"] = max(memory)
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
    what = f"benchmarking the ASR model on {len(audio)} clip(s) x {bench.repetitions} repetitions"
    with step(what):
        rows = [row | {"runtime": "onnxruntime"} for row in run_runner(transport, argv, timeout)]
    metrics = summarize_samples(rows, ASR_KEYS, prefix="asr_")
    metrics["asr_peak_rss_mb"] = max(float(r.get("peak_rss_mb", 0.0)) for r in rows)
    return BenchResult(rows, metrics)


def _testset_audio(testset_dir: Path) -> list[Path]:
    """The clean clips: the board measures speed (RTF), which noise or tempo do not change, so
    the harder variants would only multiply the time on the board (accuracy is evaluate's)."""
    from rkpipe.asr.testset import CLEAN, clip_variants

    variants = clip_variants(testset_dir)
    clips = sorted(p for p in testset_dir.glob("*.wav") if variants.get(p.name, CLEAN) == CLEAN)
    if not clips:
        raise BoardError(f"no .wav clips in {testset_dir}; run the asr_testset stage first")
    return clips


def local_rkllm_unavailable(cfg: PipelineConfig) -> str | None:
    """Why an rkllm variant cannot be benchmarked on ``board=local``, or None when it can.

    An ``.rkllm`` runs only through librkllmrt on a Rockchip NPU, so on an x86 host
    ``board.rkllm_lib`` normally does not exist; that is a missing board, not a failure of
    the conversion the stages before spent their time on.
    """
    if cfg.board.transport != "local":
        return None
    if not run_with(cfg.layout.llm.quantized).needs_runtime_lib:
        return None
    if Path(cfg.board.rkllm_lib).is_file():
        return None
    return (
        f"board.rkllm_lib={cfg.board.rkllm_lib} does not exist on this host, and an .rkllm "
        "model runs only through Rockchip's runtime on an RK35xx NPU: LLM benchmark skipped "
        "(ASR still measured). To measure it, run with a board config (e.g. board=rk3588_ssh, "
        "see README 'Deploying to a board') or point board.rkllm_lib at a librkllmrt.so here"
    )


def _pin_clocks(cfg: PipelineConfig, transport: Transport, facts: dict[str, Any]) -> int:
    """Pin the board's CPU/NPU/DDR clocks at their maximum (Rockchip's fix_freq scripts) so
    that runs are comparable; returns the number of settings written (0 on this host)."""
    from rkpipe.board.clocks import pin_frequency

    soc = facts.get("soc") or cfg.board.platform
    if cfg.board.transport == "local" or not soc:
        log.warning("board.pin_frequency: no Rockchip SoC to pin on %s; clocks left as they are",
                    cfg.board.name)  # fmt: skip
        return 0
    timeout = min(cfg.board.timeout_s, 120.0)
    return len(pin_frequency(transport, soc, board_root=cfg.board.root, timeout=timeout))


def deploy_and_bench(cfg: PipelineConfig) -> BenchResult:
    """Benchmark the variant's quantized LLM and ASR model on ``cfg.board``.

    Returns the raw samples (each tagged with board, model and runtime) and the summary
    metrics (``ttft_ms``, ``decode_tok_per_s``, ``peak_rss_mb``, ``asr_rtf``, ...). An rkllm
    variant on ``board=local`` without ``board.rkllm_lib`` gets no LLM figures but
    ``llm_bench_skipped: 1`` (see :func:`local_rkllm_unavailable`).
    Raises BoardError when a runner fails or the board cannot be reached, and before anything
    is pushed when the board answered no fingerprint (FingerprintError when the host_fingerprint
    stage's files cannot be read).
    """
    host, board = measuring_fingerprints(cfg)
    transport = make_transport(cfg.board)
    facts = {} if cfg.board.transport == "local" else check_board(cfg, transport)
    with exclusive_board(cfg.board):
        if cfg.board.pin_frequency:
            facts["pinned_clocks"] = _pin_clocks(cfg, transport, facts)
        llm, asr = _bench_models(cfg, transport)
        if cfg.eval.device and not llm.metrics.get(LLM_SKIPPED):
            figures, llm.notes = device_accuracy(cfg, transport)
            llm.metrics |= figures
        if cfg.eval.device:
            asr.metrics |= device_asr_accuracy(cfg, asr.samples, llm.notes)
    context = {"board": cfg.board.name, "platform": cfg.platform.name} | {
        f"board_{k}": v for k, v in facts.items() if isinstance(v, (str, int, float))
    }
    prov = provenance(host, cfg.board.name, board)
    context |= {"host_id": prov["host_id"], "board_id": prov["board_id"]}
    samples = [row | context | {"model": cfg.model.name} for row in llm.samples]
    samples += [row | context | {"model": cfg.asr.name} for row in asr.samples]
    return BenchResult(samples, llm.metrics | asr.metrics, facts, prov, llm.notes)


def device_accuracy(
    cfg: PipelineConfig, transport: Transport
) -> tuple[dict[str, float], dict[str, str]]:
    """The LLM's ``device_*`` accuracy on the board (:mod:`rkpipe.evaluate.device`), through the
    runner the manifest names, and the run tags that say why when it is missing."""
    from rkpipe.evaluate.device import TWINNED, evaluate_on_board
    from rkpipe.evaluate.host import reference_path

    model_dir = cfg.layout.llm.quantized
    facts = run_with(model_dir)
    lib, abi = _board_lib_path(cfg.board), cfg.board.rkllm_abi

    def score(with_lora: bool) -> tuple[dict[str, float], str | None]:
        def run_rows(request: str) -> list[dict[str, Any]]:
            argv = _runner_argv(transport, model_dir, facts, cfg.bench, lib, abi,
                                with_lora=with_lora)  # fmt: skip
            with step(
                f"scoring the LLM's accuracy on the board{'' if with_lora else ' (no LoRA)'}"
            ):
                return run_runner(transport, [*argv, "--eval-request", request],
                                  cfg.board.timeout_s)  # fmt: skip

        return evaluate_on_board(
            run_rows, transport.model_path, reference_path(cfg), cfg.eval.device_topk
        )

    figures, reason = score(with_lora=True)
    notes = {"device_eval.missing": reason} if reason else {}
    if lora_adapter(model_dir, facts) and not reason:  # what the adapter buys, on the device
        plain, plain_reason = score(with_lora=False)
        figures |= {f"device_no_lora_{key}": plain[f"device_{key}"] for key in TWINNED
                    if f"device_{key}" in plain}  # fmt: skip
        if plain_reason:
            notes["device_eval.no_lora_missing"] = plain_reason
    return figures, notes


def device_asr_accuracy(
    cfg: PipelineConfig, samples: list[dict[str, Any]], notes: dict[str, str]
) -> dict[str, float]:
    """WER/CER of the transcripts the board produced during the ASR benchmark (no extra run):
    ``device_asr_*``, or ``{}`` with the reason in ``notes`` (``device_asr.missing``)."""
    from rkpipe.asr.evaluate import board_wer
    from rkpipe.errors import AsrError

    layout = cfg.layout
    try:
        return board_wer(layout.asr_testset, layout.asr.quantized, layout.asr.float, samples)
    except (AsrError, KeyError, OSError, ValueError) as exc:
        notes["device_asr.missing"] = " ".join(str(exc).split())
        log.warning("device ASR accuracy missing: %s", notes["device_asr.missing"])
        return {}


def measuring_fingerprints(cfg: PipelineConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """This host's and the board's fingerprints (the host_fingerprint stage's files).

    Raises:
        FingerprintError: a file is missing or unreadable.
        BoardError: the board answered no fingerprint when the stage read it.
    """
    from rkpipe.hostinfo import load_fingerprint

    host = load_fingerprint(cfg.layout.host_fingerprint)
    board = load_fingerprint(cfg.layout.board_fingerprint)
    if board.get("error"):
        raise BoardError(
            f"board {cfg.board.name} answered no fingerprint ({board['error']}); nothing was "
            "pushed. Fix the connection, then dvc repro (the host_fingerprint stage rereads it)"
        )
    return host, board


@contextlib.contextmanager
def exclusive_board(board: BoardConfig) -> Iterator[None]:
    """Hold this host's lock on ``board`` while benchmarking it, so that parallel sweep
    workers (``dvc queue start -j N``) measure one after another instead of disturbing each
    other. The lock is a file in the temp dir named after the board's address; if it cannot
    be created the benchmark runs without it (with a warning)."""
    from filelock import FileLock, Timeout

    address = f"{board.transport}-{board.host}-{board.port}" if board.host else board.transport
    safe = re.sub(r"[^\w.-]", "_", address)
    path = Path(tempfile.gettempdir()) / f"rkpipe-board-{safe}.lock"
    lock = FileLock(path)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for board %s: another benchmark holds %s", board.name, path)
            start = time.monotonic()
            lock.acquire()
            log.info("board %s free after %.1f s", board.name, time.monotonic() - start)
    except OSError as exc:
        log.warning("cannot take the board lock %s (%s); benchmarking without it", path, exc)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _bench_models(cfg: PipelineConfig, transport: Transport) -> tuple[BenchResult, BenchResult]:
    """The LLM and ASR benchmarks of the variant (the LLM one skipped where it cannot run)."""
    layout = cfg.layout
    skipped = local_rkllm_unavailable(cfg)
    if skipped:
        log.warning(skipped)
        llm = BenchResult(metrics={LLM_SKIPPED: 1.0})
    else:
        llm = bench_llm(
            transport,
            layout.llm.quantized,
            cfg.bench,
            cfg.board.timeout_s,
            rkllm_lib=_board_lib_path(cfg.board),
            rkllm_abi=cfg.board.rkllm_abi,
        )
    asr = bench_asr(
        transport,
        layout.asr.quantized,
        _testset_audio(layout.asr_testset),
        cfg.bench,
        cfg.asr.max_new_tokens,
        cfg.board.timeout_s,
    )
    return llm, asr


def _board_lib_path(board: BoardConfig) -> str:
    """``board.rkllm_lib``, made absolute on ``local``: ctypes hands a bare name such as
    ``librkllmrt.so`` to the dynamic linker's search path, not to the directory where
    :func:`local_rkllm_unavailable` found the file."""
    if board.transport == "local":
        return str(Path(board.rkllm_lib).resolve())
    return board.rkllm_lib
