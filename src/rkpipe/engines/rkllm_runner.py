"""Benchmark an ``.rkllm`` model through Rockchip's ``librkllmrt.so`` with ctypes.

SELF-CONTAINED: imports only the standard library (ctypes included) and ``engine_shared.py``,
because this file is copied with that one to a board and run there with the board's
``python3`` (3.8 or newer)::

    python3 rkllm_runner.py --lib /usr/lib/librkllmrt.so --model qwen.rkllm \
        --prompt-tokens 128 --new-tokens 64 --warmup 2 --repetitions 5

It prints one JSON object per run on stdout, like the onnxruntime runners::

    {"kind": "llm", "rep": 0, "warmup": false, "ttft_ms": ..., "prefill_ms": ...,
     "prefill_tok_per_s": ..., "decode_ms": ..., "decode_tok_per_s": ..., "peak_rss_mb": ...,
     "runtime_version": "1.2.3", "abi": "1.2", "perf_source": "perf_stat", "rt_prefill_ms": ...}

Keys without a prefix are measured by this harness with ``time.perf_counter`` around
``rkllm_run`` and in the result callback (TTFT = call to the first callback carrying text;
decode = first to last token callback). ``rt_*`` keys are what the runtime reports about
itself: ``RKLLMResult.perf`` (``RKLLMPerfStat``, runtime >= 1.2.1) or, failing that, the table
the runtime prints after each run when ``RKLLM_LOG_LEVEL=1``.

ABIs (from the ``rkllm.h`` of each airockchip/rknn-llm release):

* ``1.2.0`` (1.2.0, 1.2.1b1): ``void cb(RKLLMResult*, void*, LLMCallState)`` passed directly to
  ``rkllm_init``; ``RKLLMInput`` starts with ``input_type``; no ``RKLLMPerfStat``.
* ``1.2`` (1.2.1 to 1.2.3): the callback returns ``int``; ``RKLLMInput`` gains ``role`` and
  ``enable_thinking`` in front; ``RKLLMResult`` gains ``perf``.
* ``1.3`` (1.3.0): ``rkllm_init`` takes an ``RKLLMCallback*`` struct (result, tokenizer and embed
  callbacks); ``RKLLMParam`` drops ``img_start/img_end/img_content`` and adds
  ``ignore_eos_token``; ``RKLLMInferParam`` adds ``sampling_params`` and ``max_new_tokens``.

The header has no version call, so the version comes from the runtime itself: the line
``rkllm-runtime version: X, rknpu driver version: Y, platform: Z`` it prints at the start of
``rkllm_init``. ``--probe-version`` runs such an init on a model path that does not exist (the
init fails after printing the line); by default the runner probes in a child process of itself
and picks the ABI from the answer. ``--abi`` or ``--runtime-version`` skip the probe.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    byref,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_void_p,
)
from typing import Any

try:  # the package (board=local, tests); on a board, the file pushed beside this one
    from rkpipe.engines import engine_shared as shared
except ImportError:
    import engine_shared as shared  # type: ignore[no-redef]

RUN_NORMAL, RUN_WAITING, RUN_FINISH, RUN_ERROR = 0, 1, 2, 3
INPUT_PROMPT, INPUT_TOKEN = 0, 1
INFER_GENERATE, INFER_GET_LOGITS = 0, 2  # RKLLMInferMode (the same in every ABI)
PROBE_MODEL = "/nonexistent/rkpipe-version-probe.rkllm"
LORA_NAME = b"rkpipe"  # the name --lora's adapter is loaded and selected under
PROMPT_WORD = "hello"
# Benchmark token ids come from [100, 1000): present in every vocabulary, above the special ids.
TOKEN_ID_LOW, TOKEN_ID_SPAN = 100, 900


# ----------------------------------------------------------------------------- C structs


class ExtendParam(Structure):
    """``RKLLMExtendParam`` (1.2.1+ names; 1.2.0 had the same size with ``reserved[106]``)."""

    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("n_batch", c_uint8),
        ("use_cross_attn", c_int8),
        ("reserved", c_uint8 * 104),
    ]


_PARAM_HEAD = [
    ("model_path", c_char_p),
    ("max_context_len", c_int32),
    ("max_new_tokens", c_int32),
    ("top_k", c_int32),
    ("n_keep", c_int32),
    ("top_p", c_float),
    ("temperature", c_float),
    ("repeat_penalty", c_float),
    ("frequency_penalty", c_float),
    ("presence_penalty", c_float),
    ("mirostat", c_int32),
    ("mirostat_tau", c_float),
    ("mirostat_eta", c_float),
    ("skip_special_token", c_bool),
]


class Param12(Structure):
    """``RKLLMParam`` of 1.2.x."""

    _fields_ = _PARAM_HEAD + [
        ("is_async", c_bool),
        ("img_start", c_char_p),
        ("img_end", c_char_p),
        ("img_content", c_char_p),
        ("extend_param", ExtendParam),
    ]


class Param13(Structure):
    """``RKLLMParam`` of 1.3.x."""

    _fields_ = _PARAM_HEAD + [
        ("ignore_eos_token", c_bool),
        ("is_async", c_bool),
        ("extend_param", ExtendParam),
    ]


class TokenInput(Structure):
    """``RKLLMTokenInput``."""

    _fields_ = [("input_ids", POINTER(c_int32)), ("n_tokens", c_size_t)]


class InputUnion(Union):
    """The anonymous union of ``RKLLMInput``, padded beyond the largest (multimodal) member."""

    _fields_ = [("prompt_input", c_char_p), ("token_input", TokenInput), ("_pad", c_uint8 * 256)]


class Input120(Structure):
    """``RKLLMInput`` of 1.2.0."""

    _fields_ = [("input_type", c_int), ("u", InputUnion)]


class Input12(Structure):
    """``RKLLMInput`` of 1.2.1 and later."""

    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),
        ("u", InputUnion),
    ]


class InferParam12(Structure):
    """``RKLLMInferParam`` of 1.2.x."""

    _fields_ = [
        ("mode", c_int),
        ("lora_params", c_void_p),
        ("prompt_cache_params", c_void_p),
        ("keep_history", c_int),
    ]


class InferParam13(Structure):
    """``RKLLMInferParam`` of 1.3.x."""

    _fields_ = [
        ("mode", c_int),
        ("lora_params", c_void_p),
        ("prompt_cache_params", c_void_p),
        ("sampling_params", c_void_p),
        ("keep_history", c_int),
        ("max_new_tokens", c_int32),
    ]


class LoraAdapter(Structure):
    """``RKLLMLoraAdapter`` (every ABI): what ``rkllm_load_lora`` loads."""

    _fields_ = [
        ("lora_adapter_path", c_char_p),
        ("lora_adapter_name", c_char_p),
        ("scale", c_float),
    ]


class LoraParam(Structure):
    """``RKLLMLoraParam`` (every ABI): ``RKLLMInferParam.lora_params`` points at one to run with
    the adapter of that name."""

    _fields_ = [("lora_adapter_name", c_char_p)]


class LastHiddenLayer(Structure):
    _fields_ = [("hidden_states", c_void_p), ("embd_size", c_int), ("num_tokens", c_int)]


class Logits(Structure):
    _fields_ = [("logits", c_void_p), ("vocab_size", c_int), ("num_tokens", c_int)]


class PerfStat(Structure):
    """``RKLLMPerfStat`` (1.2.1+)."""

    _fields_ = [
        ("prefill_time_ms", c_float),
        ("prefill_tokens", c_int),
        ("generate_time_ms", c_float),
        ("generate_tokens", c_int),
        ("memory_usage_mb", c_float),
    ]


_RESULT_HEAD = [
    ("text", c_char_p),
    ("token_id", c_int32),
    ("last_hidden_layer", LastHiddenLayer),
    ("logits", Logits),
]


class Result120(Structure):
    """``RKLLMResult`` of 1.2.0 (no perf)."""

    _fields_ = list(_RESULT_HEAD)


class Result12(Structure):
    """``RKLLMResult`` of 1.2.1 and later."""

    _fields_ = _RESULT_HEAD + [("perf", PerfStat)]


CallbackVoid = CFUNCTYPE(None, POINTER(Result120), c_void_p, c_int)
CallbackInt = CFUNCTYPE(c_int, POINTER(Result12), c_void_p, c_int)


class Callbacks13(Structure):
    """``RKLLMCallback`` of 1.3.x."""

    _fields_ = [
        ("result_callback", CallbackInt),
        ("result_userdata", c_void_p),
        ("tokenizer_callback", c_void_p),
        ("tokenizer_userdata", c_void_p),
        ("embed_callback", c_void_p),
        ("embed_userdata", c_void_p),
    ]


class ProbeParam(Structure):
    """Big enough for any ``RKLLMParam``: ``rkllm_createDefaultParam`` returns through a pointer."""

    _fields_ = [("model_path", c_char_p), ("_rest", c_uint8 * 1024)]


class Abi:
    """The struct and callback types of one runtime ABI."""

    def __init__(self, name: str, param: Any, inp: Any, infer: Any, result: Any, callback: Any):
        self.name = name
        self.param, self.input, self.infer, self.result, self.callback = (
            param,
            inp,
            infer,
            result,
            callback,
        )
        self.has_perf = result is Result12
        self.has_role = inp is Input12
        self.callback_struct = name == "1.3"


ABIS = {
    "1.2.0": Abi("1.2.0", Param12, Input120, InferParam12, Result120, CallbackVoid),
    "1.2": Abi("1.2", Param12, Input12, InferParam12, Result12, CallbackInt),
    "1.3": Abi("1.3", Param13, Input12, InferParam13, Result12, CallbackInt),
}
# --abi / board.rkllm_abi: probe the runtime's version (auto), or name the ABI.
ABI_CHOICES = ("auto", *ABIS)


# ----------------------------------------------------------------------------- versions


def version_key(version: str) -> tuple:
    """Sortable key of ``1.2.1`` / ``v1.2.1b1`` (a pre-release sorts before its release).

    Raises:
        ValueError: not a ``MAJOR.MINOR.PATCH[suffix]`` version.
    """
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)([A-Za-z]+\d*)?", version.strip())
    if not match:
        raise ValueError(f"not a version: {version!r}")
    major, minor, patch, pre = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "")


# The releases whose rkllm.h these structs were checked against, field by field. A newer
# runtime may have changed a struct (an old binding on a new header segfaults: rknn-llm #509),
# so it is refused until checked, unless the user names its ABI (--abi, board.rkllm_abi).
VERIFIED_RELEASES = ("1.2.0", "1.2.1", "1.2.3", "1.3.0")


def abi_for_version(version: str) -> str:
    """The ABI name (``1.2.0``, ``1.2`` or ``1.3``) of an rkllm-runtime version.

    Raises:
        ValueError: unparsable version, older than 1.2.0 (not supported), or newer than the
            newest verified release (:data:`VERIFIED_RELEASES`).
    """
    key = version_key(version)
    newest = VERIFIED_RELEASES[-1]
    if key > version_key(newest):
        raise ValueError(
            f"rkllm-runtime {version} is newer than {newest}, the newest release whose rkllm.h "
            f"this runner was checked against ({', '.join(VERIFIED_RELEASES)}); if its rkllm.h "
            f"structs match {newest}'s, pass --abi 1.3 (board.rkllm_abi=1.3)"
        )
    if key >= version_key("1.3.0"):
        return "1.3"
    if key >= version_key("1.2.1"):
        return "1.2"
    if key >= version_key("1.2.0b0"):
        return "1.2.0"
    raise ValueError(f"rkllm-runtime {version} is older than 1.2.0: upgrade the runtime")


# ----------------------------------------------------------------------------- log parsing

_PREFIX_RE = re.compile(r"[IWEDF] rkllm:")
_ROW_RE = re.compile(
    r"^\s*(Prefill|Generate)\s+([\d.]+)\s+(\d+)\s+([\d.]+|-|/)\s+([\d.]+|-|/)", re.IGNORECASE
)
_HEADER_RE = re.compile(r"^\s*Stage\s+Total Time", re.IGNORECASE)
_INIT_RE = re.compile(r"^\s*(?:Model init time \(ms\)|Init|Model Load)\s+([\d.]+)", re.IGNORECASE)
_MEMORY_RE = re.compile(r"Memory Usage \((GB|MB)\)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\s*([\d.]+)\s*$")
_INFO_RES = {
    "runtime_version": re.compile(r"rkllm-runtime version:\s*v?(\d[\w.]*)"),
    "driver_version": re.compile(r"rknpu driver version:\s*v?(\d[\w.]*)"),
    "platform": re.compile(r"platform:\s*([A-Za-z0-9_]+)"),
    "toolkit_version": re.compile(r"rkllm-toolkit version:\s*v?(\d[\w.]*)"),
    "model_dtype": re.compile(r"model_dtype:\s*([A-Za-z0-9_]+)"),
    "target_platform": re.compile(r"target_platform:\s*([A-Za-z0-9_]+)"),
}


def _body(line: str) -> str:
    """A log line from its ``I rkllm:`` prefix on (model text may precede it), without it."""
    match = _PREFIX_RE.search(line)
    return line[match.end() :] if match else line


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _fill_row(table: dict[str, Any], match: Any) -> None:
    stage = "prefill" if match.group(1).lower() == "prefill" else "generate"
    table[f"{stage}_ms"] = float(match.group(2))
    table[f"{stage}_tokens"] = int(match.group(3))
    per_token, per_second = _float(match.group(4)), _float(match.group(5))
    if per_token is not None:
        table[f"{stage}_ms_per_token"] = per_token
    if per_second is not None:
        table[f"{stage}_tok_per_s"] = per_second


def parse_perf_tables(text: str) -> list[dict[str, Any]]:
    """Every performance table the runtime printed (``RKLLM_LOG_LEVEL=1``), in order.

    Each table is a dict with ``prefill_ms``, ``prefill_tokens``, ``prefill_ms_per_token``,
    ``prefill_tok_per_s``, the same four ``generate_*`` keys, and when printed ``init_ms``
    (``Model init time`` line or ``Init`` row) and ``peak_memory_mb`` (the ``(Peak) Memory
    Usage (GB|MB)`` value; GB is converted with 1024, the runtime's own unit). Lines may carry
    the ``I rkllm:`` prefix or not; other lines are ignored. Returns [] when there is none.
    """
    tables: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    memory_unit: str | None = None
    for line in text.splitlines():
        body = _body(line)
        row = _ROW_RE.match(body)
        if _HEADER_RE.match(body) or (row and _needs_new_table(tables, row)):
            tables.append(dict(pending))
            pending.clear()
        if row:
            _fill_row(tables[-1], row)
            continue
        init = _INIT_RE.match(body)
        if init:
            target = tables[-1] if tables and "prefill_ms" not in tables[-1] else pending
            target["init_ms"] = float(init.group(1))
            continue
        memory = _MEMORY_RE.search(body)
        number = _NUMBER_RE.match(body)
        if memory:
            memory_unit = memory.group(1).upper()
        elif memory_unit and number and tables:
            scale = 1024.0 if memory_unit == "GB" else 1.0
            tables[-1]["peak_memory_mb"] = float(number.group(1)) * scale
            memory_unit = None
    return tables


def _needs_new_table(tables: list[dict[str, Any]], row: Any) -> bool:
    stage = "prefill" if row.group(1).lower() == "prefill" else "generate"
    return not tables or f"{stage}_ms" in tables[-1]


def parse_perf_table(text: str) -> dict[str, Any]:
    """The last performance table in ``text`` (see :func:`parse_perf_tables`), or {}."""
    tables = parse_perf_tables(text)
    return tables[-1] if tables else {}


def parse_runtime_info(text: str) -> dict[str, str]:
    """Versions the runtime logs: ``runtime_version``, ``driver_version``, ``platform`` (from
    ``rkllm-runtime version: X, rknpu driver version: Y, platform: Z``) and, once a model is
    loaded, ``toolkit_version``, ``model_dtype``, ``target_platform``. First occurrence wins;
    absent keys are left out."""
    info: dict[str, str] = {}
    for key, pattern in _INFO_RES.items():
        match = pattern.search(text)
        if match:
            info[key] = match.group(1)
    return info


# ----------------------------------------------------------------------------- output capture


class OutputCapture:
    """Route the process's fds 1 and 2 (the runtime's ``printf``) into a temporary log.

    Result rows go to ``self.rows`` (the original stdout). :meth:`read_new` flushes C stdio,
    returns the log text written since the last call and echoes it to the original stderr,
    so nothing the runtime says is lost.
    """

    def __enter__(self) -> OutputCapture:
        sys.stdout.flush()
        sys.stderr.flush()
        fd, self.path = tempfile.mkstemp(prefix="rkllm-log-", suffix=".txt")
        os.close(fd)
        self._saved = (os.dup(1), os.dup(2))
        writer = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.dup2(writer, 1)
        os.dup2(writer, 2)
        os.close(writer)
        self._reader = open(self.path, "rb")
        self.rows = os.fdopen(os.dup(self._saved[0]), "w")
        self._err = os.fdopen(os.dup(self._saved[1]), "w")
        self._libc = ctypes.CDLL(None)
        return self

    def read_new(self) -> str:
        """Text the process wrote to fds 1/2 since the previous call."""
        self._libc.fflush(None)
        sys.stdout.flush()
        sys.stderr.flush()
        text = self._reader.read().decode("utf-8", errors="replace")
        if text:
            self._err.write(text)
            self._err.flush()
        return text

    def __exit__(self, *exc: Any) -> None:
        self.read_new()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        for handle in (self._reader, self.rows, self._err):
            handle.close()
        os.unlink(self.path)


# ----------------------------------------------------------------------------- runtime binding


class Collector:
    """Timestamps and perf stats gathered by the result callback during one ``rkllm_run``."""

    def __init__(self, abi: Abi) -> None:
        self.abi = abi
        self.want_logits = False
        self.reset()

    def reset(self) -> None:
        """Forget the previous run."""
        self.first_token: float | None = None
        self.first_text: float | None = None
        self.last_token: float | None = None
        self.tokens = 0
        self.perf: dict[str, float] = {}
        self.finished = False
        self.error = False
        self.logits: Any = None  # [num_tokens, vocab] float32 copy, in logits mode

    def _keep_logits(self, result: Any) -> None:
        """Copy the logits out of the runtime's buffer, which is only valid in the callback."""
        import numpy as np

        logits = result.contents.logits
        if logits.logits and logits.num_tokens > 0 and logits.vocab_size > 0:
            shape = (logits.num_tokens, logits.vocab_size)
            view = np.ctypeslib.as_array(ctypes.cast(logits.logits, POINTER(c_float)), shape)
            self.logits = view.copy()

    def on_result(self, result: Any, userdata: Any, state: int) -> int:
        """The callback body (returns 0: continue)."""
        now = time.perf_counter()
        if state in (RUN_NORMAL, RUN_WAITING):
            self.tokens += 1
            self.last_token = now
            self.first_token = self.first_token or now
            if self.first_text is None and result and result.contents.text:
                self.first_text = now
            if self.want_logits and result:
                self._keep_logits(result)
        elif state == RUN_FINISH:
            self.finished = True
            if self.abi.has_perf and result:
                self.perf = _perf_dict(result.contents.perf)
        elif state == RUN_ERROR:
            self.error = True
        return 0


def _perf_dict(perf: PerfStat) -> dict[str, float]:
    return {name: float(getattr(perf, name)) for name, _ in PerfStat._fields_}


class RkllmModel:
    """An initialised model in ``librkllmrt.so`` for one ABI.

    Raises:
        OSError: the library cannot be loaded.
        RuntimeError: ``rkllm_init`` or ``rkllm_run`` returned non-zero.
    """

    def __init__(self, lib_path: str, abi: Abi, args: argparse.Namespace) -> None:
        self.abi = abi
        self.lib = ctypes.CDLL(lib_path)
        self._declare()
        self.collector = Collector(abi)
        self._callback = abi.callback(self._on_result)
        self.handle = c_void_p()
        param = self._param(args)
        if abi.callback_struct:
            self._callbacks = Callbacks13(result_callback=self._callback)
            ret = self.lib.rkllm_init(byref(self.handle), byref(param), byref(self._callbacks))
        else:
            ret = self.lib.rkllm_init(byref(self.handle), byref(param), self._callback)
        if ret != 0:
            raise RuntimeError(f"rkllm_init returned {ret} for {args.model}")
        self._lora: Any = None
        if args.lora:
            self._load_lora(args.lora)

    def _load_lora(self, path: str) -> None:
        """``rkllm_load_lora`` the adapter (scale 1.0, as Rockchip's demos) under
        :data:`LORA_NAME`; every run then selects it through ``RKLLMInferParam.lora_params``."""
        self._lora_path = path.encode()
        adapter = LoraAdapter(self._lora_path, LORA_NAME, 1.0)
        ret = self.lib.rkllm_load_lora(self.handle, byref(adapter))
        if ret != 0:
            self.destroy()
            raise RuntimeError(
                f"rkllm_load_lora returned {ret} for {path}: the LoRA adapter is missing on the "
                "board or does not match the model"
            )
        self._lora = LoraParam(LORA_NAME)

    def _with_lora(self, infer: Any) -> Any:
        if self._lora is not None:
            infer.lora_params = ctypes.addressof(self._lora)
        return infer

    def _on_result(self, result: Any, userdata: Any, state: int) -> Any:
        ret = self.collector.on_result(result, userdata, state)
        return None if self.abi.callback is CallbackVoid else ret

    def _declare(self) -> None:
        lib, abi = self.lib, self.abi
        lib.rkllm_createDefaultParam.restype = abi.param
        lib.rkllm_createDefaultParam.argtypes = []
        third = POINTER(Callbacks13) if abi.callback_struct else abi.callback
        lib.rkllm_init.argtypes = [POINTER(c_void_p), POINTER(abi.param), third]
        lib.rkllm_init.restype = c_int
        lib.rkllm_run.argtypes = [c_void_p, POINTER(abi.input), POINTER(abi.infer), c_void_p]
        lib.rkllm_run.restype = c_int
        lib.rkllm_destroy.argtypes = [c_void_p]
        lib.rkllm_destroy.restype = c_int
        lib.rkllm_load_lora.argtypes = [c_void_p, POINTER(LoraAdapter)]
        lib.rkllm_load_lora.restype = c_int

    def _param(self, args: argparse.Namespace) -> Any:
        param = self.lib.rkllm_createDefaultParam()
        self._model_path = args.model.encode()
        param.model_path = self._model_path
        param.max_context_len = args.max_context_len
        param.max_new_tokens = args.new_tokens
        param.top_k, param.top_p, param.temperature = args.top_k, args.top_p, args.temperature
        param.repeat_penalty = args.repeat_penalty
        param.frequency_penalty = args.frequency_penalty
        param.presence_penalty = args.presence_penalty
        param.skip_special_token = True
        param.is_async = False
        if self.abi.name == "1.3":
            param.ignore_eos_token = True  # always generate exactly --new-tokens
        if args.threads:
            param.extend_param.enabled_cpus_num = args.threads
            mask = args.cpu_mask or default_cpu_mask(args.threads, os.cpu_count() or args.threads)
            param.extend_param.enabled_cpus_mask = mask
        elif args.cpu_mask:
            param.extend_param.enabled_cpus_num = bin(args.cpu_mask).count("1")
            param.extend_param.enabled_cpus_mask = args.cpu_mask
        return param

    def make_input(self, mode: str, n_tokens: int) -> Any:
        """An ``RKLLMInput`` of exactly ``n_tokens`` ids, or a prompt of ``n_tokens`` words."""
        if mode == "tokens":
            return self.token_input(benchmark_token_ids(n_tokens))
        inp = self._user_input()
        self._prompt = " ".join([PROMPT_WORD] * n_tokens).encode()
        inp.input_type = INPUT_PROMPT
        inp.u.prompt_input = self._prompt
        return inp

    def token_input(self, ids: Sequence[int]) -> Any:
        """An ``RKLLMInput`` of these token ids (kept alive on the model until the next one)."""
        inp = self._user_input()
        self._ids = (c_int32 * len(ids))(*ids)
        inp.input_type = INPUT_TOKEN
        inp.u.token_input = TokenInput(self._ids, len(ids))
        return inp

    def _user_input(self) -> Any:
        inp = self.abi.input()
        if self.abi.has_role:
            inp.role = b"user"
        return inp

    def make_infer(self, new_tokens: int) -> Any:
        """``RKLLMInferParam``: generate, no history kept between runs."""
        infer = self.abi.infer(mode=INFER_GENERATE, keep_history=0)
        if self.abi.name == "1.3":
            infer.max_new_tokens = new_tokens
        return self._with_lora(infer)

    def window_logits(self, window: Sequence[int]) -> Any:
        """The logits ``[len(window), vocab]`` of one ``RKLLM_INFER_GET_LOGITS`` run over the
        token ids of ``window``, no history kept.

        Raises:
            RuntimeError: the runtime refused logits mode, or returned logits for fewer tokens.
        """
        inp = self.token_input(window)
        infer = self._with_lora(self.abi.infer(mode=INFER_GET_LOGITS, keep_history=0))
        self.collector.want_logits = True
        try:
            ret = self.lib.rkllm_run(self.handle, byref(inp), byref(infer), None)
        finally:
            self.collector.want_logits = False
        logits, error = self.collector.logits, self.collector.error
        self.collector.reset()
        if ret != 0 or error:
            raise RuntimeError(
                f"rkllm_run in logits mode (RKLLM_INFER_GET_LOGITS) returned {ret}: this runtime "
                "or model does not give logits"
            )
        if logits is None or len(logits) != len(window):
            got = 0 if logits is None else len(logits)
            raise RuntimeError(f"the runtime returned logits for {got} of {len(window)} tokens")
        return logits

    def run(self, inp: Any, infer: Any) -> dict[str, Any]:
        """One ``rkllm_run``; returns the harness timings (s) and the callback's perf stats."""
        self.collector.reset()
        start = time.perf_counter()
        ret = self.lib.rkllm_run(self.handle, byref(inp), byref(infer), None)
        end = time.perf_counter()
        col = self.collector
        if ret != 0 or col.error:
            raise RuntimeError(f"rkllm_run returned {ret} (error callback: {col.error})")
        return {
            "start": start,
            "end": end,
            "first_token": col.first_token,
            "first_text": col.first_text,
            "last_token": col.last_token,
            "tokens": col.tokens,
            "perf": dict(col.perf),
        }

    def destroy(self) -> None:
        """``rkllm_destroy`` (idempotent)."""
        if self.handle:
            self.lib.rkllm_destroy(self.handle)
            self.handle = c_void_p()


def default_cpu_mask(threads: int, cpu_count: int) -> int:
    """The ``threads`` highest-numbered CPUs: the big cores on Rockchip SoCs (RK3588 and RK3576
    number them 4-7), as Rockchip's demos choose with ``CPU4|CPU5|CPU6|CPU7``."""
    threads = max(1, min(threads, cpu_count))
    return ((1 << threads) - 1) << (cpu_count - threads)


def benchmark_token_ids(n: int) -> list[int]:
    """``n`` deterministic token ids in [100, 1000) (a stride through the range)."""
    return [TOKEN_ID_LOW + (i * 7919) % TOKEN_ID_SPAN for i in range(n)]


# ----------------------------------------------------------------------------- rows


def harness_metrics(timing: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """TTFT, prefill and decode figures from one run's timestamps (pure).

    Raises:
        RuntimeError: the run produced no token.
    """
    if timing["first_token"] is None:
        raise RuntimeError("rkllm_run returned without producing a token")
    first_text = timing["first_text"] or timing["first_token"]
    ttft_s = first_text - timing["start"]
    prefill_s = timing["first_token"] - timing["start"]
    decode_s = timing["last_token"] - timing["first_token"]
    decode_tokens = timing["tokens"] - 1
    return {
        "ttft_ms": ttft_s * 1e3,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tok_per_s": prompt_tokens / prefill_s if prefill_s > 0 else 0.0,
        "decode_ms": decode_s * 1e3,
        "decode_tokens": decode_tokens,
        "decode_tok_per_s": decode_tokens / decode_s if decode_s > 0 else 0.0,
        "total_ms": (timing["end"] - timing["start"]) * 1e3,
    }


def runtime_metrics(perf: dict[str, float], table: dict[str, Any], source: str) -> dict[str, Any]:
    """The runtime's own figures as ``rt_*`` keys, from the perf stat or the log table (pure)."""
    if source == "perf_stat":
        prefill_ms, prefill_tokens = perf["prefill_time_ms"], perf["prefill_tokens"]
        decode_ms, decode_tokens = perf["generate_time_ms"], perf["generate_tokens"]
        memory = perf["memory_usage_mb"]
    elif source == "log_table":
        prefill_ms, prefill_tokens = table["prefill_ms"], table["prefill_tokens"]
        decode_ms, decode_tokens = table["generate_ms"], table["generate_tokens"]
        memory = table.get("peak_memory_mb")
    else:
        return {}
    return {
        "rt_prefill_ms": prefill_ms,
        "rt_prefill_tokens": int(prefill_tokens),
        "rt_prefill_tok_per_s": prefill_tokens * 1e3 / prefill_ms if prefill_ms > 0 else 0.0,
        "rt_decode_ms": decode_ms,
        "rt_decode_tokens": int(decode_tokens),
        "rt_decode_tok_per_s": decode_tokens * 1e3 / decode_ms if decode_ms > 0 else 0.0,
        "rt_memory_mb": memory,
    }


def choose_perf_source(wanted: str, perf: dict[str, float], table: dict[str, Any]) -> str:
    """``perf_stat`` when the callback carried a non-zero stat, else ``log_table`` when one was
    printed, else ``none``; ``wanted`` forces one of the two (``none`` if it is absent)."""
    has_perf = bool(perf) and perf.get("prefill_time_ms", 0) > 0
    has_table = "prefill_ms" in table and "generate_ms" in table
    if wanted == "perf_stat":
        return "perf_stat" if has_perf else "none"
    if wanted == "log_table":
        return "log_table" if has_table else "none"
    return "perf_stat" if has_perf else "log_table" if has_table else "none"


# ----------------------------------------------------------------------------- version probe


def probe_version(lib_path: str) -> dict[str, Any]:
    """Make the runtime print its version line: ``rkllm_init`` on a model that does not exist.

    Runs in the ``--probe-version`` child; the runtime's own output goes to this process's
    stdout/stderr, where the parent reads the version line. Returns ``{"init_ret": int}``.
    """
    _unbuffer_c_stdout()
    lib = ctypes.CDLL(lib_path)
    lib.rkllm_createDefaultParam.restype = ProbeParam
    lib.rkllm_init.argtypes = [POINTER(c_void_p), POINTER(ProbeParam), c_void_p]
    param = lib.rkllm_createDefaultParam()
    param.model_path = PROBE_MODEL.encode()
    handle = c_void_p()
    callbacks = Callbacks13()  # valid for 1.3; never called by a failing 1.2 init
    ret = lib.rkllm_init(byref(handle), byref(param), ctypes.addressof(callbacks))
    ctypes.CDLL(None).fflush(None)
    if ret == 0 and handle:
        lib.rkllm_destroy(handle)
    return {"init_ret": int(ret)}


def _unbuffer_c_stdout() -> None:
    """Make C stdio's stdout unbuffered (glibc ``setvbuf(stdout, NULL, _IONBF, 0)``): it is a
    pipe to the parent, so a runtime that crashes in ``rkllm_init`` after printing its version
    line would otherwise lose the line in its buffer. A libc without a ``stdout`` symbol
    (bionic) keeps its buffering; the parent then falls back to ``--abi``."""
    libc = ctypes.CDLL(None)
    try:
        stream = c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stream, None, 2, 0)  # 2: _IONBF
    except (ValueError, AttributeError):
        pass


def detect_runtime(lib_path: str, timeout: float = 120.0) -> dict[str, str]:
    """Run ``--probe-version`` in a child process and parse what the runtime printed.

    Returns :func:`parse_runtime_info` of the child's output (``runtime_version`` ...).

    Raises:
        RuntimeError: no version line (the output's tail is in the message).
    """
    env = dict(os.environ, RKLLM_LOG_LEVEL=os.environ.get("RKLLM_LOG_LEVEL", "1"))
    # -u: the child's stdout is a pipe (block-buffered); a runtime that crashes after printing
    # its version line must not take the line with it.
    argv = [sys.executable, "-u", os.path.abspath(__file__), "--probe-version", "--lib", lib_path]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    info = parse_runtime_info(out.stdout + "\n" + out.stderr)
    if "runtime_version" not in info:
        tail = " | ".join((out.stdout + out.stderr).strip().splitlines()[-3:])
        raise RuntimeError(
            f"{lib_path} printed no 'rkllm-runtime version' line (exit {out.returncode}): {tail}; "
            "pass --abi 1.2.0|1.2|1.3 or --runtime-version"
        )
    return info


def resolve_abi(args: argparse.Namespace) -> dict[str, str]:
    """The ABI name and what is known of the runtime version before ``rkllm_init``:
    ``--abi`` / ``--runtime-version`` when given, else the probe's answer."""
    if args.runtime_version or args.abi != "auto":
        info = {"runtime_version": args.runtime_version} if args.runtime_version else {}
    else:
        info = detect_runtime(args.lib)
    abi = args.abi if args.abi != "auto" else abi_for_version(info["runtime_version"])
    return {**info, "abi": abi}


# ----------------------------------------------------------------------------- benchmark


def run_benchmark(
    args: argparse.Namespace, capture: OutputCapture, known: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Initialise the model, run warm-ups then repetitions; print and return one row per run.
    ``known`` is :func:`resolve_abi`'s answer (resolved here when not given)."""
    known = known or resolve_abi(args)
    abi = ABIS[known["abi"]]
    load_start = time.perf_counter()
    model = RkllmModel(args.lib, abi, args)
    load_ms = (time.perf_counter() - load_start) * 1e3
    info = {**known, **parse_runtime_info(capture.read_new()), "abi": known["abi"]}
    try:
        inp = model.make_input(args.input, args.prompt_tokens)
        infer = model.make_infer(args.new_tokens)
        plan = [(True, i) for i in range(args.warmup)] + [
            (False, i) for i in range(args.repetitions)
        ]
        rows = []
        for warmup, rep in plan:
            timing = model.run(inp, infer)
            table = parse_perf_table(capture.read_new())
            row = _row(args, timing, table, info, warmup, rep)
            row["load_ms"] = load_ms
            capture.rows.write(json.dumps(row) + "\n")
            capture.rows.flush()
            rows.append(row)
        return rows
    finally:
        model.destroy()


def run_eval(args: argparse.Namespace, capture: OutputCapture, known: dict[str, str]) -> int:
    """Device accuracy: one ``engine_shared.EVAL_ROW_KIND`` row per window of
    ``--eval-request`` (logits mode), written as soon as the window is scored."""
    request = shared.read_eval_request(args.eval_request)
    model = RkllmModel(args.lib, ABIS[known["abi"]], args)
    try:
        for index, (window, topk) in enumerate(zip(request["windows"], request["ref_topk"])):  # noqa: B905
            row = shared.window_scores(model.window_logits(window), window, topk, index)
            capture.rows.write(json.dumps(row) + "\n")
            capture.rows.flush()
    finally:
        model.destroy()
    return 0


def _row(
    args: argparse.Namespace,
    timing: dict[str, Any],
    table: dict[str, Any],
    info: dict[str, str],
    warmup: bool,
    rep: int,
) -> dict[str, Any]:
    source = choose_perf_source(args.perf_source, timing["perf"], table)
    runtime = runtime_metrics(timing["perf"], table, source)
    prompt_tokens = runtime.get("rt_prefill_tokens") or args.prompt_tokens
    row: dict[str, Any] = {"kind": "llm", "rep": rep, "warmup": warmup}
    row.update(harness_metrics(timing, prompt_tokens))
    row.update(prompt_tokens=prompt_tokens, new_tokens=timing["tokens"], input=args.input)
    row.update(peak_rss_mb=shared.peak_rss_mb(), perf_source=source, **runtime)
    for key in ("runtime_version", "driver_version", "platform", "toolkit_version", "model_dtype"):
        row[key] = info.get(key)
    row["abi"] = info["abi"]
    row["lora"] = os.path.basename(args.lora) if args.lora else None
    return row


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The runner's CLI (see the module docstring)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--lib", default=os.environ.get("RKLLM_LIB", "librkllmrt.so"))
    p.add_argument("--model", help="the .rkllm file (required unless --probe-version)")
    p.add_argument("--prompt-tokens", type=_positive, default=128)
    p.add_argument("--new-tokens", type=_positive, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repetitions", type=_positive, default=5)
    p.add_argument("--threads", type=int, default=0, help="enabled_cpus_num (0: runtime default)")
    p.add_argument(
        "--cpu-mask",
        type=lambda s: int(s, 0),
        default=0,
        help="enabled_cpus_mask (default with --threads: the highest-numbered CPUs)",
    )
    p.add_argument("--max-context-len", type=int, default=0, help="0: prompt+new rounded to 256")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--repeat-penalty", type=float, default=1.1)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--input", choices=("tokens", "prompt"), default="tokens")
    p.add_argument("--abi", choices=ABI_CHOICES, default="auto")
    p.add_argument("--runtime-version", default=None)
    p.add_argument("--perf-source", choices=("auto", "perf_stat", "log_table"), default="auto")
    p.add_argument("--probe-version", action="store_true", help="print the runtime's version line")
    p.add_argument("--eval-request", help="score these windows in logits mode (no benchmark)")
    p.add_argument("--lora", help="a LoRA adapter (model_lora.rkllm) to load and run with")
    args = p.parse_args(argv)
    if not args.probe_version and not args.model:
        p.error("--model is required")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if not args.max_context_len:
        longest = args.prompt_tokens + args.new_tokens
        if args.eval_request:  # the context must hold the longest window
            longest = max(map(len, shared.read_eval_request(args.eval_request)["windows"])) + 1
        args.max_context_len = -(-longest // 256) * 256
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: benchmark (one JSON row per run on stdout) or ``--probe-version``."""
    args = parse_args(argv)
    if args.probe_version:
        print(json.dumps(probe_version(args.lib)), flush=True)
        return 0
    os.environ.setdefault("RKLLM_LOG_LEVEL", "1")
    try:
        known = resolve_abi(args)
    except (ValueError, RuntimeError) as exc:  # one line, not a traceback
        print(f"rkllm_runner: error: {exc}", file=sys.stderr, flush=True)
        return 2
    with OutputCapture() as capture:
        try:
            if args.eval_request:
                return run_eval(args, capture, known)
            run_benchmark(args, capture, known)
            return 0
        except (ValueError, RuntimeError) as exc:  # one line the host records as the reason
            print(f"rkllm_runner: error: {exc}", file=sys.stderr, flush=True)
            return 2


if __name__ == "__main__":
    sys.exit(main())
