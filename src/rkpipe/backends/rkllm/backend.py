"""rkllm-toolkit backend: drive Rockchip's converter in its own interpreter through worker.py.

rkllm-toolkit is not on PyPI and pins its own torch/transformers, so users install
Rockchip's wheel into a separate venv. :class:`RkllmBackend` runs ``worker.py`` with that
interpreter (``RKPIPE_RKLLM_PYTHON``, else ``quant.rkllm.python``, else this interpreter if
``rkllm.api`` is importable here), sends a :class:`~.protocol.WorkerRequest` on stdin and
streams the toolkit's output line by line into the log (with the step and its elapsed
time) and into ``<out_dir>/../rkllm_toolkit.log``, which survives failures; on success a
copy is kept as ``<out_dir>/rkllm_toolkit.log`` so the stage can log it as an MLflow
artifact.

Output (``out_dir``, created atomically): ``model.rkllm`` (plus ``model_lora.rkllm`` for
the ``_rN`` algorithms), ``quant_manifest.json``, ``rkllm_toolkit.log`` and any
``*.qparams`` cache the toolkit wrote. The toolkit exports into the atomic temporary
directory next to ``out_dir``, so a failed or killed conversion never leaves a
``.rkllm`` under the final name.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.backends import register
from rkpipe.backends.base import QuantizeRequest, QuantizeResult
from rkpipe.backends.rkllm import protocol as P
from rkpipe.config.platforms import PLATFORMS, algorithm_allowed, group_size, normalise_name
from rkpipe.config.schema import QuantConfig
from rkpipe.errors import BackendError, ConfigError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic
from rkpipe.toolchain import Toolchain

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("worker.py")
ARTIFACT_NAME = "model.rkllm"
MANIFEST_FILE = "quant_manifest.json"
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


@register("rkllm")
class RkllmBackend:
    """Quantize a Hugging Face (or GGUF) LLM into a ``.rkllm`` model with rkllm-toolkit.

    ``perplexity_text``: when set, :meth:`quantize` also runs the simulated perplexity
    step (x86 ``get_logits``) on that text before exporting and reports ``sim_ppl``.
    """

    name = "rkllm"

    def __init__(
        self,
        perplexity_text: Path | None = None,
        perplexity_seqlen: int = 512,
        perplexity_max_samples: int | None = None,
    ) -> None:
        self.perplexity_text = perplexity_text
        self.perplexity_seqlen = perplexity_seqlen
        self.perplexity_max_samples = perplexity_max_samples

    def quantize(self, request: QuantizeRequest) -> QuantizeResult:
        """Convert ``request.float_model_dir`` into ``request.out_dir/model.rkllm``.

        Returns metrics ``size_mb``, ``quantize_s``, ``peak_rss_mb`` (of the worker),
        ``rkllm_<step>_s`` (and ``sim_ppl`` with ``perplexity_text``) and params
        ``rkllm.toolkit_version``, ``rkllm.build_call`` (JSON), ``rkllm.load_call`` (JSON).

        Raises:
            ConfigError: platform/dtype/algorithm not allowed, a group size that does not
                divide the model's dimensions, a missing ``extra_qparams`` file.
            BackendError: no usable interpreter, a step returned non-zero (names the step
                and the log), the worker crashed or was killed (out of memory).
        """
        spec = build_spec(request)
        python = resolve_python(request.quant.rkllm.python)
        log_path = Path(request.out_dir).parent / TOOLKIT_LOG
        with atomic_path(request.out_dir) as tmp:
            tmp.mkdir()
            export = tmp.resolve() / ARTIFACT_NAME
            steps = [spec.load, spec.build]
            with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
                steps += self._ppl_steps(request, Path(scratch))
                steps.append(P.Export(export_path=str(export)))
                run = self.run(
                    P.WorkerRequest(steps, new_marker()), python, log_path, cwd=tmp.parent
                )
            self._finish(tmp, tmp.parent, log_path)
            manifest = build_manifest(request, spec, run, python, tmp)
            write_json_atomic(tmp / MANIFEST_FILE, manifest)
        return _result(request, run, manifest, python)

    def simulate_perplexity(
        self,
        request: QuantizeRequest,
        text_file: Path,
        *,
        seqlen: int = 512,
        max_samples: int | None = None,
    ) -> dict[str, float]:
        """Simulated perplexity of the quantized model on ``text_file`` (Rockchip's recipe).

        Loads and builds like :meth:`quantize` (without exporting), tokenizes ``text_file``
        with the float model's tokenizer and evaluates ``seqlen`` windows with the
        toolkit's x86 ``get_logits``. Returns ``sim_ppl``, ``sim_ppl_windows``,
        ``sim_ppl_seqlen``, ``sim_ppl_s``. The toolkit log goes to
        ``<out_dir>/../rkllm_toolkit_ppl.log``.

        Raises:
            ConfigError / BackendError: as :meth:`quantize`; BackendError also when the
                toolkit has no ``get_logits`` (not x86) or the text is shorter than ``seqlen``.
        """
        spec = build_spec(request)
        python = resolve_python(request.quant.rkllm.python)
        out_parent = Path(request.out_dir).parent
        out_parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_parent) as scratch:
            ppl = perplexity_step(
                request.float_model_dir, text_file, Path(scratch), seqlen, max_samples
            )
            request_doc = P.WorkerRequest([spec.load, spec.build, ppl], new_marker())
            run = self.run(request_doc, python, out_parent / PPL_LOG, cwd=Path(scratch))
        return _ppl_metrics(run)

    def run(
        self, worker_request: P.WorkerRequest, python: str, log_path: Path, cwd: Path | None = None
    ) -> WorkerRun:
        """Run ``worker.py`` with ``python`` on ``worker_request``, streaming its output.

        No validation happens here: the toolkit is the judge (tests use this to check what
        the toolkit rejects). Returns the :class:`WorkerRun` when every step returned 0.

        Raises:
            BackendError: the interpreter cannot start; a step failed (names load / build /
                export, the toolkit's last lines and ``log_path``); the worker crashed
                without a response (exit code, last lines); it was SIGKILLed (out of memory:
                host RAM, peak RSS and what to do).
        """
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

    def _ppl_steps(self, request: QuantizeRequest, scratch: Path) -> list[P.Step]:
        if self.perplexity_text is None:
            return []
        return [
            perplexity_step(
                request.float_model_dir,
                Path(self.perplexity_text),
                scratch,
                self.perplexity_seqlen,
                self.perplexity_max_samples,
            )
        ]

    @staticmethod
    def _finish(out: Path, cwd: Path, log_path: Path) -> None:
        if not any(out.glob("*.rkllm")):
            raise BackendError(
                f"rkllm-toolkit export returned 0 but wrote no .rkllm file in {out}; see {log_path}"
            )
        for qparams in cwd.glob("*.qparams"):  # gdq/grq weight cache, reusable via extra_qparams
            shutil.move(str(qparams), out / qparams.name)
        shutil.copyfile(log_path, out / TOOLKIT_LOG)


# ---------------------------------------------------------------------------------------------
# Request building and validation
# ---------------------------------------------------------------------------------------------


@dataclass
class ConversionSpec:
    """The load and build steps for one request, after validation."""

    load: P.LoadHuggingface | P.LoadGguf
    build: P.Build
    platform: str
    dtype: str


def build_spec(request: QuantizeRequest) -> ConversionSpec:
    """Validate ``request`` and derive the toolkit's load and build steps.

    Raises:
        ConfigError: the platform matrix, the algorithm, a group size that does not divide
            the model's linear dimensions, or a missing ``extra_qparams`` file.
        BackendError: no model or calibration file where the request says.
    """
    quant = request.quant
    platform, dtype = normalise_name(request.platform), normalise_name(quant.dtype)
    algorithm = normalise_name(quant.algorithm)
    cores = check_matrix(platform, dtype, algorithm, quant.num_npu_core)
    load = load_step(Path(request.float_model_dir), quant)
    if isinstance(load, P.LoadHuggingface):
        check_group_size(Path(request.float_model_dir) / "config.json", dtype, platform)
    calibration = Path(request.calibration_json)
    if not calibration.is_file():
        raise BackendError(f"calibration file {calibration} not found; run the calibrate stage")
    build = P.Build(
        quantized_dtype=dtype,
        target_platform=platform,
        num_npu_core=cores,
        dataset=str(calibration.resolve()),
        optimization_level=quant.optimization_level,
        quantized_algorithm=algorithm,
        extra_qparams=extra_qparams_path(quant),
        hybrid_rate=float(quant.hybrid_rate),
        max_context=int(quant.max_context),
    )
    return ConversionSpec(load, build, platform, dtype)


def check_matrix(platform: str, dtype: str, algorithm: str, cores: int | None) -> int:
    """Re-check the platform matrix (config validation normally did); returns the core count.

    Raises ConfigError naming the value and the allowed ones.
    """
    spec = PLATFORMS.get(platform)
    if spec is None or not spec.rkllm_dtypes:
        targets = [p for p, s in PLATFORMS.items() if s.rkllm_dtypes]
        raise ConfigError(
            f"platform.name={platform!r} is not an rkllm target; allowed: {', '.join(targets)}"
        )
    if dtype not in spec.rkllm_dtypes:
        raise ConfigError(
            f"quant.dtype={dtype!r} is not supported on {platform}; "
            f"allowed: {', '.join(spec.rkllm_dtypes)}"
        )
    if not algorithm_allowed(algorithm, dtype):
        raise ConfigError(f"quant.algorithm={algorithm!r} does not apply to quant.dtype={dtype!r}")
    cores = spec.max_npu_cores if cores is None else cores
    if cores not in spec.npu_cores:
        raise ConfigError(
            f"quant.num_npu_core={cores} is not valid for {platform}; "
            f"allowed: {', '.join(map(str, spec.npu_cores))}"
        )
    return cores


def load_step(model: Path, quant: QuantConfig) -> P.LoadHuggingface | P.LoadGguf:
    """``load_huggingface`` for a directory with ``config.json``, else ``load_gguf`` for a
    ``.gguf`` file (or a directory holding exactly one). Raises BackendError otherwise."""
    if model.is_dir() and (model / "config.json").is_file():
        return P.LoadHuggingface(
            model=str(model.resolve()), device=quant.rkllm.device, dtype=quant.rkllm.load_dtype
        )
    ggufs = [model] if model.suffix == ".gguf" and model.is_file() else sorted(model.glob("*.gguf"))
    if len(ggufs) == 1:
        return P.LoadGguf(model=str(ggufs[0].resolve()))
    raise BackendError(
        f"{model}: expected a Hugging Face model directory (config.json) or one "
        f".gguf file; run the download_llm stage"
    )


def linear_dims(config: dict[str, Any]) -> dict[str, int]:
    """The input dimensions of a decoder's linear layers, from a HF ``config.json`` dict.

    ``hidden_size`` (q/k/v/gate/up/lm_head), ``intermediate_size`` (down) and
    ``num_attention_heads*head_dim`` (o_proj); a multimodal config's ``text_config`` /
    ``llm_config`` is used when present.
    """
    cfg = config.get("text_config") or config.get("llm_config") or config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_head")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    dims = {
        "hidden_size": hidden,
        "intermediate_size": _first(cfg, "intermediate_size", "n_inner", "ffn_dim"),
        "moe_intermediate_size": cfg.get("moe_intermediate_size"),
        "num_attention_heads*head_dim": heads * head_dim if heads and head_dim else None,
    }
    return {k: int(v) for k, v in dims.items() if isinstance(v, int) and v > 0}


def check_group_size(config_json: Path, dtype: str, platform: str) -> None:
    """Raise ConfigError if a group-wise ``dtype``'s group size does not divide every
    linear layer's grouped (input) dimension of the model in ``config_json``.

    Group-wise quantization splits each weight row along the reduction (input) dimension
    into blocks of the group size (as GPTQ's ``group_size``, which the toolkit maps onto the
    same dtypes); Rockchip's manual: "the group size must divide the dimension of the
    linear layer; otherwise, quantization will fail". The message names the first
    offending dimension and the dtypes of ``platform`` that would fit.
    """
    size = group_size(dtype)
    if size is None:
        return
    dims = linear_dims(json.loads(config_json.read_text(encoding="utf-8")))
    bad = [(name, value) for name, value in dims.items() if value % size]
    if not bad:
        return
    fits = [
        d
        for d in PLATFORMS[platform].rkllm_dtypes
        if group_size(d) is None or all(v % group_size(d) == 0 for v in dims.values())
    ]
    name, value = bad[0]
    raise ConfigError(
        f"quant.dtype={dtype!r} quantizes in groups of {size}, but the model's {name}={value} "
        f"is not a multiple of {size} ({config_json}); every linear layer's grouped dimension "
        f"must be; dtypes that fit on {platform}: {', '.join(fits) or 'none'}"
    )


def extra_qparams_path(quant: QuantConfig) -> str | None:
    """The ``*.qparams`` file for ``build(extra_qparams=...)``: ``quant.rkllm.extra_qparams``
    is null, a path, or ``{"path": <file>}``. Raises ConfigError for another form or a
    missing file."""
    value = quant.rkllm.extra_qparams
    if value is None:
        return None
    if isinstance(value, str):
        path = value
    elif hasattr(value, "keys") and set(value.keys()) == {"path"}:
        path = str(value["path"])
    else:
        raise ConfigError(
            "quant.rkllm.extra_qparams must be null or {path: <file.qparams>} "
            f"(a gdq/grq weight cache from a previous run), got {value!r}"
        )
    if not Path(path).is_file():
        raise ConfigError(f"quant.rkllm.extra_qparams: {path} not found")
    return str(Path(path).resolve())


def resolve_python(configured: str | None) -> str:
    """The interpreter that runs rkllm-toolkit (:data:`TOOLKIT`); raises BackendError."""
    return TOOLKIT.python(configured)


def new_marker() -> str:
    """A per-run event marker no toolkit output can contain by accident."""
    return f"{P.MARKER_PREFIX}{uuid.uuid4().hex}@@"


def perplexity_step(
    model_dir: Path, text_file: Path, scratch: Path, seqlen: int, max_samples: int | None
) -> P.Perplexity:
    """Tokenize ``text_file`` with the float model's tokenizer into ``scratch`` and return
    the worker step. Raises BackendError if the tokenizer or text cannot be read."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        ids = tokenizer(Path(text_file).read_text(encoding="utf-8"))["input_ids"]
    except (OSError, ValueError, ImportError) as exc:
        raise BackendError(
            f"cannot tokenize {text_file} with {model_dir}'s tokenizer: {exc}"
        ) from exc
    ids_file = scratch / "ppl_token_ids.json"
    ids_file.write_text(json.dumps([int(i) for i in ids]), encoding="utf-8")
    return P.Perplexity(
        token_ids_file=str(ids_file.resolve()), seqlen=seqlen, max_samples=max_samples
    )


# ---------------------------------------------------------------------------------------------
# Running the worker
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Manifest and result
# ---------------------------------------------------------------------------------------------


def build_manifest(
    request: QuantizeRequest, spec: ConversionSpec, run: WorkerRun, python: str, out: Path
) -> dict[str, Any]:
    """``quant_manifest.json``: backend, toolkit version, the calls as passed (paths as the
    request gave them), load dtype, platform, every step's return code, file hashes. Step
    durations are metrics (``rkllm_<op>_s``): an artifact holds no timings."""
    response = run.response
    load = next(s for s in response.steps if P.STEP_KIND[s.op] == "load")
    build = response.step(P.OP_BUILD)
    files = sorted(p for p in out.iterdir() if p.suffix == ".rkllm")
    return {
        "backend": "rkllm",
        "protocol": P.PROTOCOL_VERSION,
        "toolkit_version": response.toolkit_version,
        # the interpreter's version only: its path is a fact of this host (a param of the run)
        "toolkit_python": response.python,
        "platform": spec.platform,
        "quantized_dtype": spec.dtype,
        "load_call": {"method": load.op, "kwargs": public_kwargs(load.kwargs, request)},
        "load_dtype": getattr(spec.load, "dtype", None),
        "build_call": public_kwargs(build.kwargs, request),
        "adaptations": run.adaptations,
        "steps": [{"op": s.op, "ret": s.ret, **s.extra} for s in response.steps],
        "artifact": ARTIFACT_NAME,
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        "toolkit_log": TOOLKIT_LOG,
    }


def public_kwargs(kwargs: dict[str, Any], request: QuantizeRequest) -> dict[str, Any]:
    """``kwargs`` with the absolute paths we passed replaced by the request's own spelling."""
    given = {
        str(Path(request.calibration_json).resolve()): str(request.calibration_json),
        str(Path(request.float_model_dir).resolve()): str(request.float_model_dir),
    }
    out = {}
    for key, value in kwargs.items():
        if key == "export_path":
            value = str(Path(request.out_dir) / Path(str(value)).name)
        out[key] = given.get(value, value) if isinstance(value, str) else value
    return out


def _result(
    request: QuantizeRequest, run: WorkerRun, manifest: dict[str, Any], python: str
) -> QuantizeResult:
    out = Path(request.out_dir)
    size_mb = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
    metrics = {
        "size_mb": round(size_mb, 3),
        "quantize_s": round(run.seconds, 3),
        "quantize_peak_rss_mb": round(run.peak_rss_mb, 1),
    }
    for step in run.response.steps:
        metrics[f"rkllm_{step.op}_s"] = round(step.seconds, 3)
    ppl = run.response.step(P.OP_PERPLEXITY)
    if ppl is not None:
        metrics.update(
            {"sim_ppl": round(ppl.extra["ppl"], 4), "sim_ppl_windows": float(ppl.extra["nsamples"])}
        )
    params = {
        "rkllm.toolkit_version": run.response.toolkit_version,
        "rkllm.toolkit_python": python,
        "rkllm.build_call": json.dumps(manifest["build_call"], sort_keys=True),
        "rkllm.load_call": json.dumps(manifest["load_call"], sort_keys=True),
    }
    log.info("rkllm %s on %s: %s", manifest["quantized_dtype"], manifest["platform"], metrics)
    return QuantizeResult(out / ARTIFACT_NAME, out, metrics, params)


def _ppl_metrics(run: WorkerRun) -> dict[str, float]:
    step = run.response.step(P.OP_PERPLEXITY)
    return {
        "sim_ppl": round(step.extra["ppl"], 4),
        "sim_ppl_windows": float(step.extra["nsamples"]),
        "sim_ppl_seqlen": float(step.extra["seqlen"]),
        "sim_ppl_s": round(step.seconds, 3),
    }


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    return next((cfg[k] for k in keys if cfg.get(k) is not None), None)
