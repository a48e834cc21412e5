"""Run rkllm-toolkit steps inside the toolkit's own interpreter (protocol in protocol.py).

Usage: ``/path/to/toolkit-venv/bin/python worker.py < request.json``. STDLIB-ONLY apart from
``rkllm.api`` (and ``torch``, imported only by the optional perplexity step; the toolkit
pins it): this file runs where rkpipe is not installed, on Python 3.8 or newer. It loads
its sibling ``protocol.py`` by file path.

The worker reads one request on stdin, prints protocol events on stdout (lines carrying
the request's marker) while the toolkit's own output passes through, and exits 0 when
every step returned 0, 1 when a step failed, 2 on a malformed request.

Version adaptation (from Rockchip's SDK manuals 1.1.0, 1.2.0, 1.2.1, 1.2.3, 1.3.0 and the
export examples in airockchip/rknn-llm; the request always uses the 1.2+ spelling):

* Toolkit version: ``importlib.metadata.version("rkllm-toolkit")``, else
  ``rkllm.__version__``; unknown or unparsable versions get the newest (1.3) rules and
  1.0.x gets the 1.1 rules.
* ``load_huggingface``: 1.1 has only ``(model, model_lora, device)``; ``dtype``,
  ``custom_config`` and ``load_weight`` (added in 1.2.0) are dropped there, and a
  non-null ``custom_config`` is refused (custom models need 1.2.0+).
* ``build``: ``quantized_dtype`` and ``target_platform`` are always sent lower-case
  (1.3 accepts only lower case; 1.1 documents lower case; 1.2 accepted both, e.g.
  ``"RK3588"``/``"W8A8"`` in its examples).
* ``build``: ``max_context`` (<= 16384, multiple of 32) exists since 1.2.0 and is dropped
  on 1.1 (there the board's ``max_context_len``, a runtime parameter that is never a
  toolkit keyword, alone sets the context).
* ``build``: ``quantized_algorithm`` -- 1.1 knows ``normal``/``gdq``: ``grq`` becomes
  ``gdq`` (its predecessor for the same w4a16 dtypes); 1.2.x knows ``normal``/``grq``/
  ``gdq``; 1.3 dropped ``gdq``, so ``gdq`` is refused there (the guides name no
  equivalent: ``grq`` needs the GPU, so it is the user's choice, not a silent swap). The
  LoRA-recovery forms ``normal_rN``/``grq_rN`` (N in 1..64) need 1.2.1+ and are refused
  before that (no equivalent).
* ``build``: ``num_npu_core``, ``hybrid_rate``, ``extra_qparams`` (a ``*.qparams`` path from
  a previous gdq/grq run), ``optimization_level``, ``dataset`` are passed unchanged
  (present since 1.1).
* ``export_rkllm``: called with the path positionally (1.3 renamed nothing but added
  ``export_tokenizer``/``export_embedding``, both defaulting to True, which are not sent).

Every adaptation is reported in the step's ``adaptations`` so the backend can log it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import asdict

_HERE = os.path.dirname(os.path.abspath(__file__))
# Running ``python worker.py`` puts this directory first on sys.path; drop it so that the
# siblings (backend.py, protocol.py) never shadow a module the toolkit imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _load_protocol():
    name = "_rkpipe_rkllm_protocol"
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, "protocol.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations via sys.modules
    spec.loader.exec_module(module)
    return module


P = _load_protocol()
NEWEST = (1, 3, 0)
_RECOVERY = re.compile(r"^([a-z]+)_r(\d+)$")


class AdaptError(Exception):
    """The request cannot be expressed for this toolkit version."""


def toolkit_version() -> str:
    """The installed rkllm-toolkit version string, or ``"unknown"``."""
    import importlib.metadata as metadata

    for dist in ("rkllm-toolkit", "rkllm_toolkit"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    import rkllm

    return str(getattr(rkllm, "__version__", "unknown"))


def parse_version(text: str) -> tuple:
    """``"1.2.1b1"`` -> ``(1, 2, 1)``; unparsable -> the newest known version."""
    match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return NEWEST
    major, minor, patch = (int(g or 0) for g in match.groups())
    return max((major, minor, patch), (1, 1, 0))


def adapt(op: str, kwargs: dict, version: tuple) -> tuple:
    """Adapt one step's kwargs to ``version``; returns ``(kwargs, adaptations)``.

    Raises AdaptError when the request has no equivalent in that version.
    """
    kwargs = dict(kwargs)
    notes = []
    if op == P.OP_LOAD_HF:
        _adapt_load(kwargs, version, notes)
    elif op == P.OP_BUILD:
        _adapt_build(kwargs, version, notes)
    return kwargs, notes


def _adapt_load(kwargs: dict, version: tuple, notes: list) -> None:
    if version >= (1, 2, 0):
        return
    if kwargs.get("custom_config"):
        raise AdaptError("custom_config needs rkllm-toolkit >= 1.2.0")
    for key in ("dtype", "custom_config", "load_weight"):
        value = kwargs.pop(key)
        notes.append(f"dropped {key}={value!r}: load_huggingface has no {key} before 1.2.0")


def _adapt_build(kwargs: dict, version: tuple, notes: list) -> None:
    for key in ("quantized_dtype", "target_platform"):
        lowered = str(kwargs[key]).lower()
        if lowered != kwargs[key]:
            notes.append(f"{key} {kwargs[key]!r} -> {lowered!r} (lower case)")
        kwargs[key] = lowered
    if version < (1, 2, 0):
        value = kwargs.pop("max_context")
        notes.append(f"dropped max_context={value}: build has no max_context before 1.2.0")
    algorithm = _adapt_algorithm(str(kwargs["quantized_algorithm"]).lower(), version)
    if algorithm != kwargs["quantized_algorithm"]:
        notes.append(
            f"quantized_algorithm {kwargs['quantized_algorithm']!r} -> {algorithm!r} "
            f"for rkllm-toolkit {'.'.join(map(str, version))}"
        )
    kwargs["quantized_algorithm"] = algorithm


def _adapt_algorithm(algorithm: str, version: tuple) -> str:
    match = _RECOVERY.match(algorithm)
    base, rank = (match.group(1), int(match.group(2))) if match else (algorithm, None)
    if rank is not None:
        if version < (1, 2, 1):
            raise AdaptError(
                f"quantized_algorithm={algorithm!r} (LoRA recovery) needs rkllm-toolkit >= 1.2.1"
            )
        if not 1 <= rank <= 64:
            raise AdaptError(f"quantized_algorithm={algorithm!r}: the rank must be in 1..64")
    if base == "grq" and version < (1, 2, 0):
        base = "gdq"
    elif base == "gdq" and version >= (1, 3, 0):
        raise AdaptError(
            f"quantized_algorithm={algorithm!r}: gdq was removed in rkllm-toolkit 1.3.0; "
            "use grq (quant.algorithm=grq with quant.rkllm.device=cuda)"
        )
    return base if rank is None else f"{base}_r{rank}"


def call_step(llm, op: str, kwargs: dict) -> tuple:
    """Call the toolkit for one step; returns ``(ret, extra, message)``."""
    if op == P.OP_LOAD_HF:
        return llm.load_huggingface(**kwargs), {}, ""
    if op == P.OP_LOAD_GGUF:
        return llm.load_gguf(**kwargs), {}, ""
    if op == P.OP_BUILD:
        return llm.build(**kwargs), {}, ""
    if op == P.OP_EXPORT:
        return llm.export_rkllm(kwargs["export_path"]), {}, ""
    if op == P.OP_PERPLEXITY:
        return perplexity(llm, **kwargs)
    raise AdaptError(f"unknown op {op!r}")


def perplexity(llm, token_ids_file: str, seqlen: int = 512, max_samples=None) -> tuple:
    """Rockchip's ``eval_wikitext`` recipe on pre-tokenized ids; returns ``(ret, extra, msg)``.

    Windows of ``seqlen`` tokens; per window the mean cross-entropy of positions 1..n-1
    times ``seqlen``; ``ppl = exp(sum / (nsamples * seqlen))``.
    """
    if not hasattr(llm, "get_logits"):
        return -1, {}, "this rkllm-toolkit has no get_logits (simulation runs on x86 only)"
    with open(token_ids_file, encoding="utf-8") as handle:
        ids = [int(i) for i in json.load(handle)]
    nsamples = len(ids) // seqlen
    if max_samples:
        nsamples = min(nsamples, int(max_samples))
    if nsamples < 1:
        return -1, {}, f"perplexity needs at least seqlen={seqlen} tokens, got {len(ids)}"
    try:
        import torch  # rkllm-toolkit depends on it; get_logits takes tokenizer tensors
    except ImportError:
        return (
            -1,
            {},
            "get_logits needs torch in the toolkit's interpreter (rkllm-toolkit installs it)",
        )
    total = 0.0
    for i in range(nsamples):
        batch = ids[i * seqlen : (i + 1) * seqlen]
        logits = llm.get_logits({"input_ids": torch.tensor([batch])})
        if logits is None:
            return -1, {}, "get logits failed!"
        total += _mean_cross_entropy(torch, logits, batch) * seqlen
        print(f"eval_wikitext: {i + 1}/{nsamples}", file=sys.stderr, flush=True)
    ppl = math.exp(total / (nsamples * seqlen))
    return 0, {"ppl": ppl, "nsamples": nsamples, "seqlen": seqlen}, ""


def _mean_cross_entropy(torch, logits, batch: list) -> float:
    shift = logits[0, :-1, :].float()
    labels = torch.tensor(batch[1:], device=logits.device)
    return float(torch.nn.functional.cross_entropy(shift, labels))


class Emitter:
    """Writes protocol events to the original stdout, even if the toolkit replaces sys.stdout."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.out = os.fdopen(os.dup(1), "w", encoding="utf-8")

    def __call__(self, event: str, body: dict) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # Leading newline: the toolkit may have left an unterminated progress line.
        self.out.write("\n" + P.encode_event(self.marker, event, body) + "\n")
        self.out.flush()


def run_step(llm, step, version: tuple, emit: Emitter):
    """Adapt, call and time one step; returns a StepResult (never raises)."""
    emit("step_start", {"op": step.op})
    kwargs, notes, start = asdict(step), [], time.perf_counter()
    try:
        kwargs, notes = adapt(step.op, kwargs, version)
        ret, extra, message = call_step(llm, step.op, kwargs)
        ret = _as_ret(ret)
    except AdaptError as exc:
        ret, extra, message = -1, {}, str(exc)
        print(f"rkpipe worker: {step.op}: {exc}", file=sys.stderr)
    except SystemExit as exc:  # some toolkit paths call exit() on a bad argument
        ret, extra, message = None, {}, f"the toolkit called exit({exc.code!r})"
    except Exception as exc:  # the toolkit raised: report it as this step's failure
        traceback.print_exc()
        ret, extra, message = None, {}, f"{type(exc).__name__}: {exc}"
    if ret != 0 and not message:
        message = f"{step.op} returned {ret}"
    result = P.StepResult(
        op=step.op,
        ret=ret,
        seconds=round(time.perf_counter() - start, 3),
        kwargs=kwargs,
        adaptations=notes,
        message=message,
        extra=extra,
    )
    emit("step_end", asdict(result))
    return result


def _as_ret(ret) -> int:
    """The toolkit's return code as an int; anything not int-like (None ...) counts as -1."""
    if isinstance(ret, bool):
        return -1
    try:
        return int(ret)
    except (TypeError, ValueError):
        return -1


def run(request, emit: Emitter):
    """Import the toolkit and run every step until one fails; returns a WorkerResponse."""
    python = sys.version.split()[0]
    try:
        from rkllm.api import RKLLM

        version_text = toolkit_version()
        llm = RKLLM()
    except (Exception, SystemExit) as exc:
        traceback.print_exc()
        return P.WorkerResponse(
            ok=False,
            toolkit_version="unknown",
            python=python,
            failed_step=P.OP_IMPORT,
            error=f"{type(exc).__name__}: {exc}",
        )
    version = parse_version(version_text)
    emit("start", {"toolkit_version": version_text, "python": python})
    results = []
    for step in request.steps:
        results.append(run_step(llm, step, version, emit))
        if not results[-1].ok:
            break
    failed = next((r for r in results if not r.ok), None)
    return P.WorkerResponse(
        ok=failed is None,
        toolkit_version=version_text,
        python=python,
        steps=results,
        failed_step=failed.op if failed else None,
        error=failed.message if failed else "",
    )


def main() -> int:
    """Entry point: request on stdin, events on stdout; exit 0 ok, 1 step failed, 2 bad request."""
    try:
        request = P.WorkerRequest.from_json(json.load(sys.stdin))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"rkpipe worker: bad request: {exc}", file=sys.stderr)
        return 2
    emit = Emitter(request.marker)
    response = run(request, emit)
    emit("response", response.to_json())
    return 0 if response.ok else 1


if __name__ == "__main__":
    sys.exit(main())
