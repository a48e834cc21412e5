"""Run rkllm-toolkit's worker in the toolkit's interpreter and stream its output.

The worker's merged stdout/stderr is read line by line: protocol events (marked lines) drive
the step and the response; every other line goes to the log file with the step and its elapsed
time, and to the logger (progress bars throttled). A missing response, a failed step or a
SIGKILL (out of memory) becomes one BackendError naming the step, the last lines and the log.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.backends.rkllm import protocol as P
from rkpipe.errors import BackendError
from rkpipe.toolchain import Toolchain

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
ARTIFACT_NAME = "model.rkllm"
TOOLKIT_LOG = "rkllm_toolkit.log"
PPL_LOG = "rkllm_toolkit_ppl.log"
ENV_PYTHON = "RKPIPE_RKLLM_PYTHON"
TOOLKIT = Toolchain(
    name="rkllm-toolkit",
    env_var=ENV_PYTHON,
    config_key="quant.rkllm.python",
    module="rkllm.api",
    setup_hint="install Rockchip's wheel (rkllm-toolkit/packages/ in airockchip/rknn-llm) into its "
    "own venv and set quant.rkllm.python=<venv>/bin/python",
)
OOM_EXIT_CODES = (-9, 137)  # SIGKILL seen directly / through a shell
OOM_ISSUES = "airockchip/rknn-llm issues #21, #30, #112, #197"
TAIL_LINES = 12
PROGRESS_LOG_INTERVAL_S = 5.0
_PROGRESS = re.compile(r"\d+%\||it/s\]|s/it\]")


@dataclass
class WorkerRun:
    """One finished worker run: its response, exit code, wall time (s), peak RSS (MB), log."""

    response: P.WorkerResponse
    returncode: int
    seconds: float
    peak_rss_mb: float
    log_path: Path
    adaptations: list[str] = field(default_factory=list)


def resolve_python(configured: str | None) -> str:
    """The interpreter that runs rkllm-toolkit (:data:`TOOLKIT`); raises BackendError."""
    return TOOLKIT.python(configured)


def new_marker() -> str:
    """A per-run event marker no toolkit output can contain by accident."""
    return f"{P.MARKER_PREFIX}{uuid.uuid4().hex}@@"


def run_worker(
    worker_request: P.WorkerRequest, python: str, log_path: Path, cwd: Path | None = None
) -> WorkerRun:
    """Run ``worker.py`` with ``python`` on ``worker_request``, streaming its output (see
    :meth:`rkpipe.backends.rkllm.RkllmBackend.run`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log_file:
        stream = _Stream(worker_request.marker, log_file)
        log_file.write(f"# rkpipe: {python} {WORKER}\n")
        returncode, seconds, peak = _run_process(python, worker_request, stream, cwd)
    if stream.response is None:
        raise BackendError(_crash_message(returncode, stream, peak, log_path))
    if not stream.response.ok:
        raise BackendError(_failure_message(stream.response, stream, log_path))
    return WorkerRun(stream.response, returncode, seconds, peak, log_path, stream.adaptations)


class _Stream:
    """Consumes the worker's merged output: protocol events, log file, logger, tails."""

    def __init__(self, marker: str, log_file: Any) -> None:
        self.marker, self.log_file = marker, log_file
        self.response: P.WorkerResponse | None = None
        self.step, self.step_start, self.last_progress = "startup", time.monotonic(), 0.0
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.step_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.adaptations: list[str] = []

    def feed(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if not text.strip():
            return
        try:
            event = P.decode_event(self.marker, text)
        except P.ProtocolError as exc:
            raise BackendError(f"rkllm worker protocol error: {exc}") from exc
        if event is not None:
            self._event(event)
            return
        elapsed = time.monotonic() - self.step_start
        self.log_file.write(f"{elapsed:9.1f}s {self.step:>16} | {text}\n")
        self.log_file.flush()
        for tail in (self.tail, self.step_tail):
            _push(tail, text)
        self._log_line(text, elapsed)

    def _log_line(self, text: str, elapsed: float) -> None:
        now = time.monotonic()
        if _PROGRESS.search(text) and "100%" not in text:  # progress bars: throttled
            if now - self.last_progress < PROGRESS_LOG_INTERVAL_S:
                return
            self.last_progress = now
        log.info("[rkllm %s +%.1fs] %s", self.step, elapsed, text)

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.pop("event")
        if kind == "start":
            log.info("rkllm-toolkit %s (python %s)", event["toolkit_version"], event["python"])
        elif kind == "step_start":
            self.step, self.step_start = event["op"], time.monotonic()
            self.last_progress = 0.0
            self.step_tail.clear()
            log.info("rkllm %s: started", self.step)
        elif kind == "step_end":
            for note in event.get("adaptations", []):
                self.adaptations.append(f"{event['op']}: {note}")
                log.warning("rkllm %s: adapted for this toolkit: %s", event["op"], note)
            log.info("rkllm %s: ret=%s in %.1f s", event["op"], event["ret"], event["seconds"])
        elif kind == "response":
            self.response = P.WorkerResponse.from_json(event)
            event = {k: event[k] for k in ("ok", "failed_step", "error", "toolkit_version")}
        self.log_file.write(f"# rkpipe: {kind} {json.dumps(event, sort_keys=True)}\n")


def _push(tail: collections.deque[str], text: str) -> None:
    """Append ``text``; a progress bar replaces the previous state of the same bar."""
    if tail and _PROGRESS.search(text) and _PROGRESS.search(tail[-1]):
        if tail[-1].split(":")[0] == text.split(":")[0]:
            tail.pop()
    tail.append(text)


def _run_process(
    python: str, request: P.WorkerRequest, stream: _Stream, cwd: Path | None
) -> tuple[int, float, float]:
    """Start the worker, feed the request, pump its output; returns (exit code, s, peak MB)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    if env.get("PYTHONPATH"):  # the worker runs in a scratch cwd: keep relative entries valid
        entries = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in entries if p)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [python, "-u", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    except OSError as exc:
        raise BackendError(f"cannot start the rkllm interpreter {python}: {exc}") from exc
    try:
        _send(proc, request)
        _pump(proc.stdout.fileno(), stream)
        returncode, peak = _wait(proc)
    finally:
        _stop(proc)
    return returncode, time.monotonic() - start, peak


def _send(proc: subprocess.Popen, request: P.WorkerRequest) -> None:
    try:
        proc.stdin.write(json.dumps(request.to_json()).encode("utf-8"))
        proc.stdin.close()
    except BrokenPipeError:  # the worker died at once; its output says why
        pass


def _pump(fd: int, stream: _Stream) -> None:
    """Split the output on \\n and \\r (progress bars) and feed each line as it arrives."""
    pending = b""
    while chunk := os.read(fd, 65536):
        *lines, pending = re.split(rb"\r\n|\r|\n", pending + chunk)
        for line in lines:
            stream.feed(line)
    if pending:
        stream.feed(pending)


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Reap the worker; returns (exit code, its peak RSS in MB from wait4's rusage)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss = usage.ru_maxrss
    except (AttributeError, ChildProcessError):  # no wait4: the children's lifetime peak
        import resource

        proc.wait()
        maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = maxrss / 1e6 if sys.platform == "darwin" else maxrss * 1024 / 1e6
    return proc.returncode, peak_mb


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a worker still running (we were interrupted) and close its pipes."""
    if proc.returncode is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _failure_message(response: P.WorkerResponse, stream: _Stream, log_path: Path) -> str:
    op = response.failed_step or "unknown"
    kind = P.STEP_KIND.get(op, op)
    if op == P.OP_IMPORT:
        return (
            f"cannot import rkllm.api in the rkllm interpreter: {response.error}; install "
            f"Rockchip's rkllm-toolkit wheel there or set {ENV_PYTHON} / quant.rkllm.python "
            f"(log: {log_path})"
        )
    step = response.step(op)
    ret = step.ret if step else None
    output = " | ".join(stream.step_tail) or "(no output)"
    return (
        f"rkllm-toolkit {kind} step failed ({op} ret={ret}, rkllm-toolkit "
        f"{response.toolkit_version}): {response.error}; toolkit output: {output}; "
        f"full log: {log_path}"
    )


def _crash_message(returncode: int, stream: _Stream, peak_mb: float, log_path: Path) -> str:
    kind = P.STEP_KIND.get(stream.step, stream.step)
    if returncode in OOM_EXIT_CODES:
        return (
            f"rkllm-toolkit ran out of memory during the {kind} step: the worker was killed "
            f"(SIGKILL, exit {returncode}, most likely by the kernel's OOM killer) at a peak of "
            f"{peak_mb:.0f} MB on a host with {host_ram_gb():.1f} GB RAM. Converting needs "
            "several times the float model's size (Rockchip recommends 32-64 GB for >1B "
            "models): try a smaller model, quant.rkllm.load_dtype=float16/bfloat16, more RAM "
            f"or swap (see {OOM_ISSUES}); log: {log_path}"
        )
    output = " | ".join(stream.step_tail or stream.tail) or "(no output)"
    return (
        f"rkllm worker crashed during the {kind} step: exited with code {returncode} "
        f"without a response; last log lines: {output}; full log: {log_path}"
    )


def host_ram_gb() -> float:
    """Physical memory of this host in GB (10^9 bytes), 0.0 if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0
