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

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rkpipe.backends import register
from rkpipe.backends.base import QuantizeRequest, QuantizeResult
from rkpipe.backends.rkllm import protocol as P
from rkpipe.backends.rkllm.run import (
    ARTIFACT_NAME,
    PPL_LOG,
    TOOLKIT_LOG,
    WorkerRun,
    new_marker,
    resolve_python,
    run_worker,
)
from rkpipe.backends.rkllm.spec import ConversionSpec, build_spec, perplexity_step
from rkpipe.errors import BackendError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic
from rkpipe.progress import step as progress_step
from rkpipe.quant_manifest import MANIFEST_FILE, RunWith

log = logging.getLogger(__name__)


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
                with progress_step(f"converting with rkllm-toolkit ({request.quant.dtype})"):
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
        return run_worker(worker_request, python, log_path, cwd)

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
        "run_with": rkllm_run_with(spec.platform, response.toolkit_version).as_dict(),
    }


def rkllm_run_with(platform: str, toolkit_version: str) -> RunWith:
    """How an ``.rkllm`` runs: only through librkllmrt on an RK35xx NPU, by the rkllm runner."""
    return RunWith(
        runtime="rkllm",
        runner="rkllm_runner",
        model=ARTIFACT_NAME,
        host_evaluable=False,
        needs_runtime_lib=True,
        platform=platform,
        toolkit_version=toolkit_version,
    )


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
