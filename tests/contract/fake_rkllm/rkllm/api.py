"""Fake ``rkllm.api.RKLLM`` that enforces the documented rules and records every call.

The rules are restated here from Rockchip's SDK manuals (1.1.0, 1.2.x, 1.3.0) on purpose,
independently of ``rkpipe.config.platforms``: a contract fake that imported the code under
test could not catch a wrong matrix there. See ``rkllm/__init__.py`` for the environment
switches. Every method returns 0 on success and -1 (after printing a message in the
toolkit's style) on a rejected argument, like the real toolkit; an unknown keyword raises
TypeError because the signatures are real Python signatures of that version.
"""

import functools
import inspect
import json
import os
import re
import signal
import sys
import time

from rkllm import __version__

MAGIC = b"FAKE-RKLLM\n"
VERSION = tuple(int(x) for x in re.findall(r"\d+", __version__)[:3])

W4A16 = ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128")
MATRIX = {
    "rk3588": (("w8a8", "w8a8_g128", "w8a8_g256", "w8a8_g512"), (1, 2, 3), (1, 1, 0)),
    "rk3576": (W4A16 + ("w8a8",), (1, 2), (1, 1, 0)),
    "rk3562": (("w8a8", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w4a8_g32"), (1,), (1, 2, 0)),
    "rv1126b": (W4A16 + ("w8a8",), (1,), (1, 2, 1)),
}  # platform -> (dtypes, npu cores, first toolkit version supporting it)
LOAD_DTYPES = ("float32", "float16", "bfloat16")


def _algorithms():
    if VERSION < (1, 2, 0):
        return ("normal", "gdq"), ()
    if VERSION < (1, 2, 1):
        return ("normal", "grq", "gdq"), ()
    if VERSION < (1, 3, 0):
        return ("normal", "grq", "gdq"), ("normal", "grq", "gdq")
    return ("normal", "grq"), ("normal", "grq")  # plain names, names with an _rN form


def _record(method, args):
    path = os.environ.get("FAKE_RKLLM_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"method": method, "args": args}, sort_keys=True) + "\n")


def _crash_if_asked(step):
    if os.environ.get("FAKE_RKLLM_CRASH") == step:
        print(f"fake rkllm: crashing in {step}", file=sys.stderr, flush=True)
        os._exit(3)
    if os.environ.get("FAKE_RKLLM_OOM") == step:
        print(f"fake rkllm: allocating too much in {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def recorded(step):
    """Record the call's arguments (as passed), then apply the failure switches for ``step``."""

    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)  # TypeError like the real call
            _record(func.__name__, {k: v for k, v in bound.arguments.items() if k != "self"})
            if step != "export":  # export crashes half-way through writing instead
                _crash_if_asked(step)
            if os.environ.get("FAKE_RKLLM_FAIL") == step:
                print(f"ERROR: {func.__name__} failed (injected by FAKE_RKLLM_FAIL={step})")
                return -1
            return func(self, *args, **kwargs)

        return wrapper

    return decorate


def _error(message):
    print(f"ERROR: {message}", flush=True)
    return -1


def _progress(desc, total=4):
    for i in range(total + 1):
        bar = "#" * i + " " * (total - i)
        sys.stderr.write(f"\r{desc}: {100 * i // total:3d}%|{bar}| {i}/{total}")
        sys.stderr.flush()
    sys.stderr.write("\n")


class _RKLLMBase:
    """Shared state and checks; the public methods live in the versioned subclasses."""

    def __init__(self):
        self._config = None
        self._gguf = False
        self._build = None
        self._device = None  # load_huggingface's device; a GGUF load has none
        print(f"INFO: rkllm-toolkit version: {__version__}", flush=True)

    # -- load ---------------------------------------------------------------------------
    def _load_hf(self, model, model_lora, device, dtype="float32", custom_config=None):
        config_path = os.path.join(str(model), "config.json")
        if not os.path.isfile(config_path):
            return _error(f"Load model failed: {model} is not a Hugging Face model directory")
        if model_lora is not None and not os.path.exists(model_lora):
            return _error(f"model_lora: {model_lora} not found!")
        if device not in ("cpu", "cuda"):
            return _error(f"device: {device} not support! Options: ['cpu', 'cuda']")
        if device == "cuda" and os.environ.get("FAKE_RKLLM_CUDA") != "1":
            return _error("device: cuda is not available on this host!")
        self._device = device
        if dtype not in LOAD_DTYPES:
            return _error(f"dtype: {dtype} not support! Options: {list(LOAD_DTYPES)}")
        if custom_config is not None and not os.path.isfile(custom_config):
            return _error(f"custom_config: {custom_config} not found!")
        with open(config_path, encoding="utf-8") as handle:
            self._config = json.load(handle)
        _progress("Loading checkpoint shards", 2)
        print(f"INFO: loaded {self._config.get('model_type', 'model')} in {dtype}")
        return 0

    def _load_gguf(self, model):
        if not os.path.isfile(model):
            return _error(f"Load model failed: {model} not found!")
        with open(model, "rb") as handle:
            if handle.read(4) != b"GGUF":
                return _error(f"Load model failed: {model} is not a GGUF file!")
        self._config, self._gguf = {}, True
        return 0

    # -- build --------------------------------------------------------------------------
    def _build_checked(self, args):
        if self._config is None:
            return _error("Please load model first!")
        message = self._platform_problem(args) or self._option_problem(args)
        message = message or self._device_problem(args["quantized_algorithm"])
        message = message or self._dataset_problem(args.get("dataset"))
        message = message or self._group_problem(args["quantized_dtype"])
        if message:
            return _error(message)
        for desc in ("Optimizing model", "Building model"):
            _progress(desc)
        print("INFO: Model has been saved to memory, ready to export", flush=True)
        self._build = dict(args)
        return 0

    def _device_problem(self, algorithm):
        # The guides: grq "must use the GPU" (load_huggingface(device="cuda")).
        if str(algorithm).split("_r")[0] == "grq" and self._device == "cpu":
            return f"quantized_algorithm: {algorithm} must use the GPU, load with device='cuda'!"
        return None

    @staticmethod
    def _platform_problem(args):
        # Rockchip's own 1.3.0 example (export_rkllm.py) passes "W8A8" and "RK3588": accepted.
        platform, dtype = str(args["target_platform"]).lower(), str(args["quantized_dtype"]).lower()
        known = [p for p, (_, _, since) in MATRIX.items() if VERSION >= since]
        if platform not in known:
            return f"target_platform: {platform} not support! Options: {known}"
        dtypes, cores, _ = MATRIX[platform]
        if dtype not in dtypes:
            return f"target_platform: {platform} not support quantized_dtype: {dtype}!"
        if args["num_npu_core"] not in cores:
            return f"target_platform: {platform} not support num_npu_core: {args['num_npu_core']}!"
        return None

    @staticmethod
    def _option_problem(args):
        algorithm, dtype = args["quantized_algorithm"], str(args["quantized_dtype"]).lower()
        plain, recoverable = _algorithms()
        match = re.match(r"^([a-z]+)_r(\d+)$", str(algorithm))
        base = match.group(1) if match else algorithm
        if (match and (base not in recoverable or not 1 <= int(match.group(2)) <= 64)) or (
            not match and algorithm not in plain
        ):
            return f"quantized_algorithm: {algorithm} not support!"
        if base in ("grq", "gdq") and dtype not in W4A16:
            return f"quantized_algorithm: {algorithm} only support w4a16 quantized_dtype!"
        if args["optimization_level"] not in (0, 1):
            return f"optimization_level: {args['optimization_level']} not support! Options: [0, 1]"
        if not 0 <= args["hybrid_rate"] < 1:
            return f"hybrid_rate: {args['hybrid_rate']} must be in [0, 1)!"
        max_context = args.get("max_context", 4096)
        if not 0 < max_context <= 16384 or max_context % 32:
            return f"max_context: {max_context} must be <= 16384 and aligned to 32!"
        qparams = args.get("extra_qparams")
        if qparams is not None and not os.path.isfile(qparams):
            return f"extra_qparams: {qparams} not found!"
        return None

    @staticmethod
    def _dataset_problem(dataset):
        if dataset is None:
            return None
        if not os.path.isfile(dataset):
            return f"dataset: {dataset} not found!"
        with open(dataset, encoding="utf-8") as handle:
            try:
                records = json.load(handle)
            except ValueError as exc:
                return f"dataset: {dataset} is not JSON: {exc}"
        valid = (
            isinstance(records, list)
            and records
            and all(
                isinstance(r, dict)
                and isinstance(r.get("input"), str)
                and isinstance(r.get("target"), str)
                for r in records
            )
        )
        return None if valid else f'dataset: {dataset} must be a list of {{"input", "target"}}!'

    def _group_problem(self, dtype):
        match = re.search(r"_g(\d+)$", str(dtype).lower())
        if not match or self._gguf:
            return None
        group, cfg = int(match.group(1)), self._config
        heads = cfg.get("num_attention_heads")
        head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads else None)
        dims = {
            "hidden_size": cfg.get("hidden_size"),
            "intermediate_size": cfg.get("intermediate_size"),
            "num_attention_heads*head_dim": heads * head_dim if heads else None,
        }
        for name, value in dims.items():
            if value and value % group:
                return f"group size {group} must divide the linear layer dimension {name}={value}!"
        return None

    # -- export -------------------------------------------------------------------------
    def _export(self, export_path):
        if self._build is None:
            return _error("Please build model first!")
        parent = os.path.dirname(os.path.abspath(export_path))
        if not os.path.isdir(parent):
            return _error(f"export_path: directory {parent} does not exist!")
        payload = MAGIC + json.dumps(self._build, sort_keys=True).encode("utf-8")
        self._write_slowly(export_path, payload)
        if re.search(r"_r\d+$", self._build["quantized_algorithm"]):
            stem, ext = os.path.splitext(export_path)
            self._write_slowly(f"{stem}_lora{ext}", MAGIC + b'{"lora": true}')
        print(f"INFO: Model has been saved to {export_path}!", flush=True)
        return 0

    @staticmethod
    def _write_slowly(path, payload, chunks=8):
        size = max(1, len(payload) // chunks + 1)
        with open(path, "wb") as handle:
            for i in range(0, len(payload), size):
                handle.write(payload[i : i + size])
                handle.flush()
                if i:
                    _crash_if_asked("export")  # a partial file is on disk now
                time.sleep(0.002)

    # -- simulation (x86) ---------------------------------------------------------------
    def get_logits(self, inputs):
        """Deterministic logits: 2.0 for token (id + 1) % vocab, 0.0 elsewhere."""
        ids = inputs["input_ids"]
        if type(ids).__module__.split(".")[0] != "torch":  # the guides pass tokenizer tensors
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(ids).__name__}")
        rows = ids.tolist()
        _record("get_logits", {"input_ids_shape": [len(rows), len(rows[0])]})
        if self._build is None:
            print("ERROR: Please build model first!")
            return None
        vocab = int(self._config.get("vocab_size", 32))
        logits = [
            [[2.0 if v == (t + 1) % vocab else 0.0 for v in range(vocab)] for t in row]
            for row in rows
        ]
        import torch

        return torch.tensor(logits)

    def chat_model(self, messages, args):
        _record("chat_model", {"messages": messages, "args": args})
        return "fake answer"


class RKLLM_1_1(_RKLLMBase):
    """rkllm-toolkit 1.1.x signatures."""

    @recorded("load")
    def load_huggingface(self, model, model_lora=None, device="cpu"):
        return self._load_hf(model, model_lora, device)

    @recorded("load")
    def load_gguf(self, model):
        return self._load_gguf(model)

    @recorded("build")
    def build(
        self,
        do_quantization=True,
        optimization_level=1,
        quantized_dtype="w8a8",
        quantized_algorithm="normal",
        target_platform="rk3588",
        num_npu_core=3,
        extra_qparams=None,
        dataset=None,
        hybrid_rate=0,
    ):
        return self._build_checked(_args(locals()))

    @recorded("export")
    def export_rkllm(self, export_path):
        return self._export(export_path)


class RKLLM_1_2(RKLLM_1_1):
    """rkllm-toolkit 1.2.x: load dtype/custom_config/load_weight, build max_context."""

    @recorded("load")
    def load_huggingface(
        self,
        model,
        model_lora=None,
        device="cpu",
        dtype="float32",
        custom_config=None,
        load_weight=True,
    ):
        return self._load_hf(model, model_lora, device, dtype, custom_config)

    @recorded("build")
    def build(
        self,
        do_quantization=True,
        optimization_level=1,
        quantized_dtype="w8a8",
        quantized_algorithm="normal",
        target_platform="rk3588",
        num_npu_core=3,
        extra_qparams=None,
        dataset=None,
        hybrid_rate=0,
        max_context=4096,
    ):
        return self._build_checked(_args(locals()))


class RKLLM_1_3(RKLLM_1_2):
    """rkllm-toolkit 1.3.x: export_rkllm gains export_tokenizer / export_embedding."""

    @recorded("export")
    def export_rkllm(self, export_path, export_tokenizer=True, export_embedding=True):
        return self._export(export_path)


def _args(local_vars):
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


if VERSION < (1, 2, 0):
    RKLLM = RKLLM_1_1
elif VERSION < (1, 3, 0):
    RKLLM = RKLLM_1_2
else:
    RKLLM = RKLLM_1_3

if os.environ.get("FAKE_RKLLM_NO_LOGITS"):
    del _RKLLMBase.get_logits
