"""Run rknn-toolkit2 steps inside the toolkit's own interpreter (driven by ``rkpipe.asr.rknn``).

Usage: ``/path/to/.venv-rknn/bin/python rknn_worker.py < request.json``. STDLIB-ONLY apart from
``rknn.api`` and ``numpy`` (which the toolkit itself depends on, imported only by the
``inference`` step): this file runs where rkpipe is not installed, on Python 3.8 or newer.

Request (one JSON document on stdin)::

    {"marker": "@@rkpipe-rknn:<token>@@",
     "steps": [{"op": "config", "kwargs": {...}},
               {"op": "load_onnx", "kwargs": {"model": ..., "inputs": [...],
                                              "input_size_list": [[...]]}},
               {"op": "build", "kwargs": {"do_quantization": false, "dataset": null}},
               {"op": "export_rknn", "kwargs": {"export_path": ...}},
               {"op": "init_runtime", "kwargs": {}},
               {"op": "inference", "kwargs": {"inputs": ["a.npy"], "outputs": ["a.out.npy"]}}]}

Each step is the ``RKNN`` method of that name called with ``kwargs`` (``inference`` loads each
``.npy`` input, calls ``inference(inputs=[array], data_format="nchw")`` and saves the first output
to the matching path). Events go to stdout on lines starting with the marker::

    <marker>{"event": "start", "toolkit_version": "2.5.0", "python": "3.11.7"}
    <marker>{"event": "step", "op": "build", "ret": 0, "seconds": 1.2, "error": ""}
    <marker>{"event": "response", "ok": true, "failed_step": null, "error": ""}

Everything else on stdout/stderr is the toolkit's own log. Exit 0 when every step returned 0,
1 when one failed (the run stops there), 2 on a malformed request.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
# ``python rknn_worker.py`` puts this directory first on sys.path; drop it so the siblings
# (quantize.py, ...) never shadow a module the toolkit imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

OPS = ("config", "load_onnx", "build", "export_rknn", "init_runtime", "inference")


def toolkit_version() -> str:
    """The installed rknn-toolkit2 version string, or ``"unknown"``."""
    import importlib.metadata as metadata

    for dist in ("rknn-toolkit2", "rknn_toolkit2"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def emit(marker: str, event: str, body: dict) -> None:
    """Print one protocol event on the original stdout (even if the toolkit swapped it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    line = "\n" + marker + json.dumps(dict(body, event=event), sort_keys=True) + "\n"
    os.write(1, line.encode("utf-8"))


def inference(rknn, inputs: list, outputs: list) -> int:
    """Run the runtime on each ``.npy`` input; save the first output per input. Returns 0/-1."""
    import numpy as np

    for src, dst in zip(inputs, outputs):  # noqa: B905 (Python 3.8: no strict=)
        result = rknn.inference(inputs=[np.load(src)], data_format="nchw")
        if not result:
            print("rkpipe rknn worker: inference returned no output", file=sys.stderr)
            return -1
        np.save(dst, np.asarray(result[0], dtype=np.float32))
    return 0


def call(rknn, op: str, kwargs: dict):
    """Call the toolkit for one step; returns its return code."""
    if op == "inference":
        return inference(rknn, kwargs["inputs"], kwargs["outputs"])
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return getattr(rknn, op)(**kwargs)


def as_ret(ret) -> int:
    """The toolkit's return code as an int; anything not int-like (None ...) is -1."""
    if isinstance(ret, bool):
        return -1
    try:
        return int(ret)
    except (TypeError, ValueError):
        return -1


def run_step(rknn, step: dict, marker: str) -> bool:
    """Call one step and emit its event; True when it returned 0 (never raises)."""
    start, error = time.perf_counter(), ""
    try:
        ret = as_ret(call(rknn, step["op"], dict(step.get("kwargs") or {})))
    except SystemExit as exc:  # the toolkit calls exit() on some bad arguments
        ret, error = -1, f"the toolkit called exit({exc.code!r})"
    except Exception as exc:  # the toolkit raised: this step failed
        traceback.print_exc()
        ret, error = -1, f"{type(exc).__name__}: {exc}"
    if ret != 0 and not error:
        error = f"{step['op']} returned {ret}"
    seconds = round(time.perf_counter() - start, 3)
    emit(marker, "step", {"op": step["op"], "ret": ret, "seconds": seconds, "error": error})
    return ret == 0


def run(request: dict) -> int:
    """Import the toolkit and run the steps until one fails; returns the exit code."""
    marker = request["marker"]
    try:
        from rknn.api import RKNN

        rknn = RKNN(verbose=bool(request.get("verbose", False)))
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        error = f"cannot import rknn.api: {type(exc).__name__}: {exc}"
        emit(marker, "response", {"ok": False, "failed_step": "import", "error": error})
        return 1
    emit(marker, "start", {"toolkit_version": toolkit_version(),
                           "python": sys.version.split()[0]})  # fmt: skip
    failed = None
    for step in request["steps"]:
        if not run_step(rknn, step, marker):
            failed = step["op"]
            break
    try:
        rknn.release()
    except Exception:  # releasing is best effort
        traceback.print_exc()
    emit(
        marker,
        "response",
        {
            "ok": failed is None,
            "failed_step": failed,
            "error": "" if failed is None else f"{failed} failed",
        },
    )
    return 0 if failed is None else 1


def main() -> int:
    """Entry point: request on stdin, events on stdout."""
    try:
        request = json.load(sys.stdin)
        if not isinstance(request.get("marker"), str) or not isinstance(request["steps"], list):
            raise ValueError("need 'marker' (str) and 'steps' (list)")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"rkpipe rknn worker: bad request: {exc}", file=sys.stderr)
        return 2
    return run(request)


if __name__ == "__main__":
    sys.exit(main())
