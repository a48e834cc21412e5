"""Fake ``rknn.api.RKNN`` (rknn-toolkit2 2.5.0 signatures) that enforces the documented rules.

The rules are restated from Rockchip's rknn-toolkit2 user guide (2.x) on purpose, independently
of ``rkpipe.asr.rknn``: load_onnx needs an existing model with opset <= 19 and as many
``input_size_list`` entries as ``inputs``; build needs a loaded model and, with
``do_quantization=True``, a dataset text file listing one existing ``.npy`` per line;
export_rknn and init_runtime need a built model; init_runtime without a target is the x86
simulator; inference needs init_runtime. The "simulator" runs the loaded ONNX model with
onnxruntime and rounds the output through float16 (int8 builds add a small perturbation), so
a caller comparing with its own onnxruntime run sees near but not exact agreement.
"""

import functools
import inspect
import json
import os
import sys

PLATFORMS = ("rk3562", "rk3566", "rk3568", "rk3576", "rk3588", "rv1103", "rv1106", "rv1126b")
DTYPES = ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")
MAGIC = b"FAKE-RKNN\n"


def _jsonable(value):
    if hasattr(value, "shape"):
        return {"ndarray": list(value.shape)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def recorded(func):
    """Record the call (arguments as bound), then apply the FAKE_RKNN_* switches."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)  # TypeError like the real call
        path = os.environ.get("FAKE_RKNN_RECORD")
        if path:
            args_ = {k: _jsonable(v) for k, v in bound.arguments.items() if k != "self"}
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"method": func.__name__, "args": args_}) + "\n")
        if os.environ.get("FAKE_RKNN_CRASH") == func.__name__:
            print(f"fake rknn: crashing in {func.__name__}", file=sys.stderr, flush=True)
            os._exit(3)
        if os.environ.get("FAKE_RKNN_FAIL") == func.__name__:
            return _error(f"{func.__name__} failed (injected by FAKE_RKNN_FAIL)")
        return func(self, *args, **kwargs)

    return wrapper


def _error(message):
    print(f"E {message}", flush=True)
    return -1


class RKNN:
    """The subset of rknn-toolkit2's ``RKNN`` that rkpipe uses, with the real signatures."""

    def __init__(self, verbose=False, verbose_file=None):
        self._config, self._model, self._inputs, self._built, self._runtime = (
            None,
            None,
            None,
            None,
            False,
        )
        print("I rknn-toolkit2 version: 2.5.0 (fake)", flush=True)

    @recorded
    def config(
        self,
        mean_values=None,
        std_values=None,
        quantized_dtype="w8a8",
        quantized_algorithm="normal",
        quantized_method="channel",
        quantized_hybrid_level=0,
        target_platform=None,
        quant_img_RGB2BGR=False,
        float_dtype="float16",
        optimization_level=3,
        custom_string=None,
        remove_weight=False,
        compress_weight=False,
        inputs_yuv_fmt=None,
        single_core_mode=False,
        dynamic_input=None,
        model_pruning=False,
        op_target=None,
        quantize_weight=False,
        remove_reshape=False,
        sparse_infer=False,
        mini_rknn=False,
        enable_flash_attention=False,
        auto_hybrid_cos_thresh=0.98,
        auto_hybrid_euc_thresh=None,
        memory_plan_strategy="BestFit",
        compute_order="WidthFirst",
        compiler_control_file=None,
        **kwargs,
    ):
        if target_platform is None or str(target_platform).lower() not in PLATFORMS:
            return _error(f"config: target_platform {target_platform} not support! {PLATFORMS}")
        if quantized_dtype not in DTYPES:
            return _error(f"config: quantized_dtype {quantized_dtype} not support! {DTYPES}")
        if quantized_algorithm not in ("normal", "mmse", "kl_divergence", "gdq"):
            return _error(f"config: quantized_algorithm {quantized_algorithm} not support!")
        if optimization_level not in (0, 1, 2, 3):
            return _error(f"config: optimization_level {optimization_level} not support!")
        self._config = {"target_platform": target_platform, "quantized_dtype": quantized_dtype}
        return 0

    @recorded
    def load_onnx(
        self, model, inputs=None, input_size_list=None, input_initial_val=None, outputs=None
    ):
        import onnx

        if self._config is None:
            return _error("load_onnx: please call config first!")
        if not os.path.isfile(model):
            return _error(f"load_onnx: {model} not found!")
        proto = onnx.load(model, load_external_data=False)
        opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if opset > 19:
            return _error(f"load_onnx: opset {opset} not support, the max opset is 19!")
        names = [i.name for i in proto.graph.input]
        if inputs is not None:
            if input_size_list is None or len(input_size_list) != len(inputs):
                return _error("load_onnx: inputs and input_size_list must have the same length!")
            missing = [n for n in inputs if n not in names]
            if missing:
                return _error(f"load_onnx: inputs {missing} not in the model inputs {names}!")
        self._model, self._inputs = model, list(inputs or names)
        return 0

    @recorded
    def build(self, do_quantization=True, dataset=None, rknn_batch_size=None, auto_hybrid=False):
        if self._model is None:
            return _error("build: please load model first!")
        if do_quantization:
            if dataset is None or not os.path.isfile(dataset):
                return _error(f"build: dataset {dataset} not found (needed for quantization)!")
            with open(dataset, encoding="utf-8") as handle:
                lines = [line.split() for line in handle if line.strip()]
            if not lines:
                return _error(f"build: dataset {dataset} is empty!")
            for line in lines:
                if len(line) != len(self._inputs) or not all(
                    p.endswith(".npy") and os.path.isfile(p) for p in line
                ):
                    return _error(f"build: bad dataset line {' '.join(line)}!")
        self._built = {"do_quantization": bool(do_quantization), **self._config}
        print("I rknn building done.", flush=True)
        return 0

    @recorded
    def export_rknn(self, export_path, **kwargs):
        if self._built is None:
            return _error("export_rknn: please build model first!")
        with open(export_path, "wb") as handle:
            handle.write(MAGIC + json.dumps(self._built, sort_keys=True).encode("utf-8"))
        return 0

    @recorded
    def init_runtime(
        self,
        target=None,
        device_id=None,
        perf_debug=False,
        eval_mem=False,
        async_mode=False,
        core_mask=0,
        fallback_prior_device="cpu",
    ):
        if self._built is None:
            return _error("init_runtime: please build or load rknn model first!")
        if target is not None:
            return _error(f"init_runtime: no device {target} connected!")
        print("I Target is None, use simulator!", flush=True)
        self._runtime = True
        return 0

    @recorded
    def inference(self, inputs, data_format=None, inputs_pass_through=None, get_frame_id=False):
        import numpy as np
        import onnxruntime as ort

        if not self._runtime:
            print("E inference: runtime not initialized!", flush=True)
            return None
        session = ort.InferenceSession(self._model, providers=["CPUExecutionProvider"])
        feeds = dict(zip(self._inputs, inputs, strict=True))
        outputs = session.run(None, feeds)
        noise = 1e-3 if self._built["do_quantization"] else 0.0
        return [(o * (1 + noise)).astype(np.float16).astype(np.float32) for o in outputs]

    @recorded
    def release(self):
        return None
