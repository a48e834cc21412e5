"""What the engines share, pushed to a board next to whichever engine runs there.

STDLIB ONLY at import (numpy is imported inside the functions that need it): the rkllm runner,
which must run on a board's bare Python, imports it too. An engine imports it from the package
when rkpipe is installed (``board=local``, tests) and as its sibling file on a board, where
:meth:`rkpipe.board.ssh.RemoteTransport.runner_command` pushes it beside the engine.

It is also the runners' watchdog on a board: ``python3 engine_shared.py --watchdog ARGV...``
runs ARGV in its own process group and kills that group when the connection that started it
goes away (see :func:`watch`), so that a benchmark never outlives its ``deploy_bench`` stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import wave
from typing import Any

SAMPLE_RATE = 16000  # Hz: what the ASR engines feed their models
WATCHDOG_FLAG = "--watchdog"  # argv[1] that makes this file the runners' watchdog
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_POLL_S = 0.2


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (10^6 B): VmHWM, else getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1e6 if sys.platform == "darwin" else maxrss * 1024 / 1e6


# ----------------------------------------------------------------------------- device accuracy
# The host sends token windows and, per predicted position, the float reference's top-k token
# ids (``rkpipe.evaluate.device``); a runner answers one ``EVAL_ROW_KIND`` row per window with
# the log-probabilities a KL divergence, a perplexity and a top-1 agreement need: of the target
# token, of the reference's top-k, of all the other tokens together, and its own argmax. Full
# logits (vocab x positions floats) never leave the board.
EVAL_ROW_KIND = "llm_eval"
EVAL_ROW_CHUNK = 128  # positions per float64 [chunk, vocab] array: bounds the runner's memory


def read_eval_request(path: str) -> dict[str, Any]:
    """The windows and reference top-k ids :func:`rkpipe.evaluate.device.write_request` wrote.

    Raises:
        ValueError: not such a request (a window and its top-k rows disagree in length).
    """
    import json

    with open(path, encoding="utf-8") as handle:
        request = json.load(handle)
    windows, topk = request.get("windows"), request.get("ref_topk")
    if not windows or not isinstance(topk, list) or len(windows) != len(topk):
        raise ValueError(f"{path}: expected 'windows' and one 'ref_topk' list per window")
    for i, (window, rows) in enumerate(zip(windows, topk)):  # noqa: B905 (boards: Python < 3.10)
        if len(window) < 2 or len(rows) != len(window) - 1:
            raise ValueError(f"{path}: window {i} has {len(window)} ids and {len(rows)} top-k rows")
    return request


def split_mass(x: Any, topk_ids: Any) -> tuple[Any, Any, Any]:
    """Log-probabilities from float64 log-weights ``x`` ``[N, V]`` (logits, or log-probs with
    any offset): those of ``topk_ids`` ``[N, k]``, the log of the probability of every other
    token together ``[N]`` (-inf when none is left), and each row's log-normaliser ``[N]``.

    One pass of exp over ``x``: the rest is the total mass minus the top-k's. That subtraction
    loses digits only when the top-k hold nearly everything, so rows whose rest is below 1e-6
    of the total are summed again exactly.
    """
    import numpy as np

    rows = np.arange(len(x))[:, None]
    peak = x.max(axis=-1)
    weights = np.exp(x - peak[:, None])
    total = weights.sum(axis=-1)
    rest_mass = total - weights[rows, topk_ids].sum(axis=-1)
    log_total = np.log(total) + peak
    with np.errstate(divide="ignore"):
        rest = np.log(np.maximum(rest_mass, 0.0)) + peak - log_total
    for row in np.flatnonzero(rest_mass < total * 1e-6):
        others = np.delete(x[row], topk_ids[row])
        rest[row] = np.logaddexp.reduce(others) - log_total[row] if others.size else -np.inf
    return x[rows, topk_ids] - log_total[:, None], rest, log_total


def window_scores(logits: Any, window: list[int], topk_ids: list[list[int]], index: int) -> dict:
    """The row a runner prints for window ``index`` from its logits ``[len(window), V]``:
    position t predicts ``window[t + 1]``, so the last row of logits is not used.

    Raises:
        ValueError: the logits have the wrong shape, or a NaN or an infinity.
    """
    import numpy as np

    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) != len(window):
        raise ValueError(f"window {index}: logits {logits.shape} for {len(window)} tokens")
    row: dict[str, Any] = {"kind": EVAL_ROW_KIND, "window": index, "target_logp": [],
                           "top1": [], "topk_logp": [], "rest_logp": []}  # fmt: skip
    targets = np.asarray(window[1:], dtype=np.int64)
    ids = np.asarray(topk_ids, dtype=np.int64)
    for lo in range(0, len(targets), EVAL_ROW_CHUNK):
        hi = min(lo + EVAL_ROW_CHUNK, len(targets))
        x = logits[lo:hi].astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(f"window {index}: the runtime returned NaN or infinite logits")
        topk, rest, log_total = split_mass(x, ids[lo:hi])
        row["target_logp"] += (x[np.arange(hi - lo), targets[lo:hi]] - log_total).tolist()
        row["top1"] += x.argmax(axis=-1).tolist()
        row["topk_logp"] += topk.tolist()
        row["rest_logp"] += rest.tolist()
    return row


def read_wav(path: str | os.PathLike) -> tuple[Any, int]:
    """Read a 16-bit PCM WAV file with the stdlib ``wave`` module.

    Returns ``(audio, sample_rate)``: float32 samples in [-1, 1), mixed down to mono by averaging
    the channels. Raises ``ValueError`` for another sample width (e.g. 8/24/32-bit, float) and
    ``wave.Error``/``EOFError`` for a file that is not a readable WAV.
    """
    import numpy as np

    with wave.open(str(path), "rb") as handle:
        width = handle.getsampwidth()
        channels = handle.getnchannels()
        rate = handle.getframerate()
        frames = handle.readframes(handle.getnframes())
    if width != 2:
        raise ValueError(
            f"{path}: expected 16-bit PCM, got {8 * width}-bit samples; "
            f"convert with: sox IN -b 16 -e signed-integer OUT.wav"
        )
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm[: len(pcm) // channels * channels].reshape(-1, channels).mean(axis=1)
    return np.ascontiguousarray(pcm, dtype=np.float32), rate


def resample(audio: Any, sr: int, target_sr: int = SAMPLE_RATE) -> Any:
    """Resample mono ``audio`` from ``sr`` to ``target_sr`` Hz.

    Band-limited FFT resampling (like ``scipy.signal.resample``): the spectrum is truncated (or
    zero-padded) to the new Nyquist frequency, so down-sampling does not alias. It treats the clip
    as periodic, which can smear a few samples at the edges; that is negligible for speech clips.
    Returns float32; the input is returned unchanged when the rates are equal.
    """
    import numpy as np

    if sr == target_sr or len(audio) == 0:
        return np.asarray(audio, dtype=np.float32)
    n_in = len(audio)
    n_out = max(1, int(round(n_in * target_sr / sr)))
    spectrum = np.fft.rfft(np.asarray(audio, dtype=np.float64))
    out_bins = n_out // 2 + 1
    kept = np.zeros(out_bins, dtype=np.complex128)
    n_copy = min(out_bins, len(spectrum))
    kept[:n_copy] = spectrum[:n_copy]
    return (np.fft.irfft(kept, n_out) * (n_out / n_in)).astype(np.float32)


def load_clip(path: str) -> Any:
    """Read a WAV file and resample it to 16 kHz mono float32."""
    audio, rate = read_wav(path)
    return resample(audio, rate, SAMPLE_RATE)


def asr_parser(description: str) -> argparse.ArgumentParser:
    """The command line every ASR engine takes (each adds its own options)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="exported model directory")
    parser.add_argument("--audio", nargs="+", required=True, help="16-bit PCM WAV files")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def asr_row(clip: str, rep: int, warmup: bool, result: dict) -> dict:
    """One JSON row of an ASR engine's benchmark (``decoder_ms`` 0 for a CTC model)."""
    audio_s = result["audio_s"]
    return {
        "kind": "asr",
        "clip": clip,
        "rep": rep,
        "warmup": warmup,
        "features_ms": round(result["features_ms"], 3),
        "encoder_ms": round(result["encoder_ms"], 3),
        "decoder_ms": round(result.get("decoder_ms", 0.0), 3),
        "total_ms": round(result["total_ms"], 3),
        "audio_s": round(audio_s, 4),
        "rtf": (result["total_ms"] / 1e3 / audio_s) if audio_s > 0 else None,
        "new_tokens": len(result["ids"]),
        "ids": result["ids"],
        "peak_rss_mb": peak_rss_mb(),
    }


def cpu_session(path: Any, threads: int) -> Any:
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads that sleep when
    idle: an engine's sessions each own a thread pool, and spinning pools steal the cores from
    one another (measured: 2x slower end to end on 2 cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- runner lifetime


def _prctl() -> Any:
    """libc's ``prctl``, or None where there is none (not Linux)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(signum: int | None = None) -> Any:
    """A ``preexec_fn`` that makes Linux send ``signum`` (default SIGKILL) to the child when the
    process that started it dies (``prctl(PR_SET_PDEATHSIG)``), even by SIGKILL; None where
    prctl is unavailable.

    prctl is looked up here, before the fork: the child of a threaded parent must not take the
    dynamic loader's locks. The parent may die between fork and prctl, hence the ``getppid``
    check after it.
    """
    import signal

    prctl = _prctl()
    if prctl is None:
        return None
    signum = signal.SIGKILL if signum is None else signum
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return arm


def kill_group(process: Any) -> int:
    """SIGKILL the process group led by ``process`` (started with ``start_new_session``), the
    runner's own children included, and reap the runner; returns its exit status.

    Only while the runner is not reaped yet (running, or a zombie): until then its pid cannot
    be reused, so the group id still names its group and no other.
    """
    import signal

    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is already gone
    return process.wait()


def _exited(process: Any) -> bool:
    """Whether ``process`` has exited, leaving it unreaped (see :func:`kill_group`)."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class _Stopped(BaseException):
    """A signal asked the watchdog to stop (raised by its handler, so ``finally`` runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def _watchable_stdin() -> bool:
    """Whether stdin is a pipe or socket: what sshd and adbd give a command. /dev/null, a file
    or a terminal would read EOF (or block) without meaning that the caller went away."""
    import stat

    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _caller_gone(parent: int, stdin_open: bool) -> bool:
    """Wait up to WATCHDOG_POLL_S for a sign that the caller went away: stdin at EOF (the SSH
    channel or adb socket closed) or a new parent (the sshd session that started us exited)."""
    import select
    import time

    if stdin_open:
        ready, _, _ = select.select([0], [], [], WATCHDOG_POLL_S)
        if ready and not os.read(0, 65536):
            return True
    else:
        time.sleep(WATCHDOG_POLL_S)
    return os.getppid() != parent


def watch(argv: list[str]) -> int:
    """Run ``argv`` in a new process group and return its exit status (128 + N for signal N).

    The group is SIGKILLed, and the runner reaped, when the runner exits (ending what it left
    behind) or when the caller goes away: stdin reaches EOF (the host keeps it open for the
    whole run, and its end closes with the SSH channel or adb socket), this process gets a new
    parent, or SIGHUP (adbd's hang-up), SIGTERM or SIGINT arrives. The runner also dies with
    this process if that is SIGKILLed (PR_SET_PDEATHSIG).
    """
    import signal
    import subprocess

    parent, stdin_open = os.getppid(), _watchable_stdin()
    prctl = _prctl()
    if prctl is not None:  # our caller's death reaches the SIGHUP handler below
        prctl(PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    try:
        runner = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent()
        )
    except OSError as exc:
        print(f"watchdog: cannot start {argv[:1]}: {exc}", file=sys.stderr)
        return 127
    # Installed after the start: a hang-up before it kills us, and the runner with us.
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_stopped)
    try:
        while not _exited(runner):
            if _caller_gone(parent, stdin_open):
                kill_group(runner)
                return 128 + signal.SIGHUP
        code = kill_group(runner)  # also ends what the runner left behind in its group
        return code if code >= 0 else 128 - code
    except _Stopped as stop:
        kill_group(runner)
        return 128 + stop.signum


if __name__ == "__main__" and sys.argv[1:2] == [WATCHDOG_FLAG]:
    sys.exit(watch(sys.argv[2:]))
