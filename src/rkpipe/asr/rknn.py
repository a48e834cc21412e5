"""``asr.backend=rknn``: convert the ASR encoder for the Rockchip NPU with rknn-toolkit2.

rknn-toolkit2 (PyPI ``rknn-toolkit2``; 2.5.0 pins numpy <= 1.26.4, onnx <= 1.18, torch <= 2.4,
protobuf <= 4.25.4) cannot share rkpipe's environment, so it lives in its own venv
(``scripts/setup_rknn.sh`` makes ``.venv-rknn``, on demand only) and is driven through the
stdlib worker ``rknn_worker.py`` in that interpreter, like the rkllm backend. The interpreter is
``$RKPIPE_RKNN_PYTHON``, else ``asr.rknn.python``, else ``./.venv-rknn/bin/python``, else this
interpreter if ``rknn.api`` imports here.

The documented call sequence (rknn-toolkit2 2.x ``RKNN`` API)::

    config(target_platform=..., mean_values=None, std_values=None, quantized_dtype=...,
           quantized_algorithm=..., optimization_level=...)
    load_onnx(model=<encoder.onnx>, inputs=[<input name>], input_size_list=[<fixed shape>])
    build(do_quantization=..., dataset=<txt: one .npy path per line>)
    export_rknn(<out>/encoder.rknn)
    init_runtime()            # target None: the x86 simulator
    inference(inputs=[x])     # compared with the onnxruntime fp32 encoder on the same inputs

The encoder is Whisper's ``encoder_model.onnx`` (input ``input_features``,
``[1, n_mels, 3000]``) or wav2vec2's whole ``model.onnx`` (``input_values``,
``[1, input_seconds * 16000]``). The NPU needs static shapes and opset <= 19. Calibration and
simulation inputs come from synthesized calibration clips (not the eval clips).

Output (``out_dir``, atomically): ``encoder.rknn``, ``rknn_manifest.json`` (toolkit version,
the calls as made, each step's ret and seconds, simulator agreement) and ``rknn_toolkit.log``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rkpipe.config.schema import AsrConfig, AsrRknnConfig
from rkpipe.errors import AsrError, BackendError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic
from rkpipe.toolchain import Toolchain

logger = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("rknn_worker.py")
ENV_PYTHON = "RKPIPE_RKNN_PYTHON"
VENV_PYTHON = Path(".venv-rknn") / "bin" / "python"
SETUP_HINT = "create it with: bash scripts/setup_rknn.sh (makes .venv-rknn)"
TOOLKIT = Toolchain(
    name="rknn-toolkit2",
    env_var=ENV_PYTHON,
    config_key="asr.rknn.python",
    module="rknn",
    setup_hint=SETUP_HINT,
    venv_python=VENV_PYTHON,
)
RKNN_FILE = "encoder.rknn"
MANIFEST = "rknn_manifest.json"
TOOLKIT_LOG = "rknn_toolkit.log"
MAX_OPSET = 19
MARKER_PREFIX = "@@rkpipe-rknn:"
SIM_INPUTS = 2  # calibration clips also run through the simulator
TAIL_LINES = 12


def convert_for_stage(
    fp32_dir: Path, quantized_dir: Path, cfg: AsrConfig, testset_dir: Path | None = None
) -> dict:
    """``asr.backend=rknn`` in the quantize_asr stage: the encoder into ``quantized_dir/rknn``,
    simulated on ``cfg.rknn.sim_clips_per_variant`` clips per variant of ``testset_dir``."""
    from rkpipe.asr.rknn_wer import pick_eval_clips

    simulate = cfg.rknn.simulate and testset_dir is not None
    eval_clips = pick_eval_clips(testset_dir, cfg.rknn.sim_clips_per_variant) if simulate else []
    decoding = {"max_new_tokens": cfg.max_new_tokens, "language": cfg.language, "task": cfg.task}
    return convert_encoder_rknn(
        fp32_dir, quantized_dir / "rknn", cfg.rknn, calib_sentences=cfg.quant.calib_sentences,
        eval_clips=eval_clips, decoding=decoding,
    )  # fmt: skip


def convert_encoder_rknn(
    fp32_dir: Path, out_dir: Path, cfg: AsrRknnConfig, clips: list | None = None,
    calib_sentences: str | None = None, eval_clips: list | None = None,
    decoding: dict | None = None,
) -> dict:  # fmt: skip
    """Convert the fp32 ONNX encoder in ``fp32_dir`` to ``out_dir/encoder.rknn``.

    ``clips`` (``[(name, 16 kHz float32 audio, text)]``) feed quantization and, without
    ``eval_clips``, the first two the simulation; by default ``cfg.calib_clips`` clips are
    synthesized from ``calib_sentences`` (see :mod:`rkpipe.asr.calibration`). ``eval_clips``
    (``[(name, audio, text, test-set variant)]``, never calibration data) are simulated instead
    and decoded with ``decoding`` for the WER figures of :mod:`rkpipe.asr.rknn_wer`. Returns
    metrics ``rknn_size_mb``, ``rknn_<step>_s`` and, with ``cfg.simulate``,
    ``rknn_sim_cosine_min`` / ``rknn_sim_max_abs_diff`` (simulator vs onnxruntime fp32 on the
    same inputs) and the ``rknn_sim_wer*`` figures. Raises :class:`AsrError` for an encoder the NPU
    cannot take (opset > 19, unknown architecture) and :class:`BackendError` when no toolkit
    interpreter is found or a toolkit step fails (naming the step and the log).
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    spec = encoder_spec(fp32_dir, cfg)
    python = resolve_python(cfg.python)
    clips = clips if clips is not None else _clips(cfg, calib_sentences)
    log_path = out_dir.parent / TOOLKIT_LOG
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            files = write_inputs(fp32_dir, spec, clips, Path(scratch), eval_clips)
            steps = build_steps(spec, cfg, files, tmp.resolve() / RKNN_FILE)
            events = run_worker(steps, python, log_path)
            sim = _simulation(fp32_dir, files, eval_clips, decoding) if cfg.simulate else {}
        if not (tmp / RKNN_FILE).is_file():
            raise BackendError(f"export_rknn returned 0 but wrote no {RKNN_FILE}; see {log_path}")
        shutil.copyfile(log_path, tmp / TOOLKIT_LOG)
        manifest = build_manifest(spec, cfg, events, sim, tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
    return _metrics(manifest, events)


# --------------------------------------------------------------------------- encoder spec


def encoder_spec(fp32_dir: Path, cfg: AsrRknnConfig) -> dict:
    """``{"model", "input", "shape", "engine"}`` of the encoder to convert (static shape).

    Raises :class:`AsrError` for a missing export, an unknown engine or an opset above 19.
    """
    from rkpipe.asr.architectures import by_engine
    from rkpipe.asr.engine import engine_name

    name = engine_name(fp32_dir)
    info = json.loads((fp32_dir / "engine.json").read_text(encoding="utf-8"))
    spec = by_engine(name).encoder_spec(fp32_dir, info, cfg)
    if not spec["model"].is_file():
        raise AsrError(f"{spec['model']} not found: run the ASR export stage first")
    check_opset(spec["model"])
    return {**spec, "engine": name}


def check_opset(model: Path) -> int:
    """The default-domain opset of ``model``; :class:`AsrError` if above :data:`MAX_OPSET`."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        raise AsrError(
            f"{model.name} uses ONNX opset {opset}; rknn-toolkit2 accepts opset <= {MAX_OPSET}. "
            f"Re-export with opset {MAX_OPSET} or lower"
        )
    return opset


def resolve_python(configured: str | None) -> str:
    """The interpreter holding rknn-toolkit2 (:data:`TOOLKIT`). Raises BackendError."""
    return TOOLKIT.python(configured)


# --------------------------------------------------------------------------- inputs


def _clips(cfg: AsrRknnConfig, calib_sentences: str | None) -> list:
    from rkpipe.asr.calibration import calibration_clips

    return calibration_clips(calib_sentences, max(cfg.calib_clips, SIM_INPUTS))


def write_inputs(
    fp32_dir: Path, spec: dict, clips: list, scratch: Path, eval_clips: list | None = None
) -> dict:
    """Save the fixed-shape encoder input of every clip as ``.npy`` plus the dataset list.

    The simulated inputs are those of ``eval_clips`` when given, else the first
    :data:`SIM_INPUTS` clips; each gets the onnxruntime fp32 reference output. Returns
    ``{"dataset", "inputs", "outputs", "references"}`` (paths). Raises :class:`AsrError` when
    there are no clips.
    """
    import numpy as np

    from rkpipe.asr.engine import load_engine

    if not clips:
        raise AsrError("rknn conversion needs at least one calibration clip")
    engine = load_engine(fp32_dir, threads=2)
    paths = []
    for i, (_, audio, _) in enumerate(clips):
        x = _fixed(engine.features(audio), spec["shape"])
        paths.append(scratch / f"input_{i:03d}.npy")
        np.save(paths[-1], x)
    sim = paths[:SIM_INPUTS]
    if eval_clips:
        sim = [scratch / f"eval_{i:03d}.npy" for i in range(len(eval_clips))]
        for path, (_, audio, *_) in zip(sim, eval_clips, strict=True):
            np.save(path, _fixed(engine.features(audio), spec["shape"]))
    references = [p.with_suffix(".ref.npy") for p in sim]
    for src, ref in zip(sim, references, strict=True):
        np.save(ref, _reference(engine, spec, np.load(src)))
    dataset = scratch / "dataset.txt"
    dataset.write_text("".join(f"{p.resolve()}\n" for p in paths), encoding="utf-8")
    outputs = [p.with_suffix(".rknn_out.npy") for p in sim]
    return {"dataset": dataset, "inputs": sim, "outputs": outputs, "references": references}


def _fixed(x: Any, shape: list[int]) -> Any:
    """``x`` zero-padded / trimmed on its last axis to ``shape`` (float32)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)[..., : shape[-1]]
    pad = shape[-1] - x.shape[-1]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x


def _reference(engine: Any, spec: dict, x: Any) -> Any:
    from rkpipe.asr.architectures import by_engine

    return by_engine(spec["engine"]).encoder_reference(engine, x)


# --------------------------------------------------------------------------- worker


def build_steps(spec: dict, cfg: AsrRknnConfig, files: dict, export_path: Path) -> list[dict]:
    """The worker steps (documented API calls) for ``spec`` and ``cfg`` (pure)."""
    steps = [
        {"op": "config", "kwargs": {
            "target_platform": cfg.target_platform, "mean_values": None, "std_values": None,
            "quantized_dtype": cfg.quantized_dtype,
            "quantized_algorithm": cfg.quantized_algorithm,
            "optimization_level": cfg.optimization_level}},
        {"op": "load_onnx", "kwargs": {
            "model": str(Path(spec["model"]).resolve()), "inputs": [spec["input"]],
            "input_size_list": [list(spec["shape"])]}},
        {"op": "build", "kwargs": {
            "do_quantization": bool(cfg.do_quantization),
            "dataset": str(files["dataset"]) if cfg.do_quantization else None}},
        {"op": "export_rknn", "kwargs": {"export_path": str(export_path)}},
    ]  # fmt: skip
    if cfg.simulate:
        steps.append({"op": "init_runtime", "kwargs": {}})
        steps.append({"op": "inference", "kwargs": {
            "inputs": [str(p) for p in files["inputs"]],
            "outputs": [str(p) for p in files["outputs"]]}})  # fmt: skip
    return steps


def run_worker(steps: list[dict], python: str, log_path: Path) -> list[dict]:
    """Run ``rknn_worker.py`` with ``python`` on ``steps``; returns its protocol events.

    The toolkit's output goes to ``log_path``. Raises :class:`BackendError` when the
    interpreter cannot start, the toolkit cannot be imported, a step fails or the worker dies.
    """
    marker = f"{MARKER_PREFIX}{uuid.uuid4().hex}@@"
    request = json.dumps({"marker": marker, "steps": steps})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write(f"# rkpipe: {python} {WORKER}\n")
        log_file.flush()
        try:
            proc = subprocess.run(
                [python, "-u", str(WORKER)],
                input=request,
                text=True,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        except OSError as exc:
            raise BackendError(f"cannot start the rknn interpreter {python}: {exc}") from exc
    text = log_path.read_text(encoding="utf-8", errors="replace")
    events = [json.loads(line[len(marker):]) for line in text.splitlines()
              if line.startswith(marker)]  # fmt: skip
    _check_events(events, proc.returncode, text, marker, log_path)
    return events


def _check_events(events: list, code: int, text: str, marker: str, log_path: Path) -> None:
    response = next((e for e in events if e["event"] == "response"), None)
    tail = " | ".join(
        [line.strip() for line in text.splitlines() if line.strip() and marker not in line][
            -TAIL_LINES:
        ]
    )
    if response is None:
        raise BackendError(
            f"rknn worker exited with code {code} without a response; last log lines: {tail}; "
            f"full log: {log_path}"
        )
    if response["failed_step"] == "import":
        raise BackendError(f"{response['error']}; {SETUP_HINT} (log: {log_path})")
    if not response["ok"]:
        step = next(e for e in events if e.get("op") == response["failed_step"])
        raise BackendError(
            f"rknn-toolkit2 {step['op']} step failed (ret={step['ret']}): {step['error']}; "
            f"toolkit output: {tail}; full log: {log_path}"
        )


def _simulation(fp32_dir: Path, files: dict, eval_clips: list | None, decoding) -> dict:
    """The simulator's agreement with onnxruntime, and its WER when eval clips were run."""
    sim = _compare(files)
    if eval_clips:
        from rkpipe.asr.rknn_wer import simulated_wer

        if decoding is None:  # the schema's defaults (the stage passes the pipeline's own)
            asr = AsrConfig()
            decoding = {"max_new_tokens": asr.max_new_tokens, "language": asr.language,
                        "task": asr.task}  # fmt: skip
        sim |= simulated_wer(fp32_dir, files["outputs"], files["references"], eval_clips, decoding)
    return sim


def _compare(files: dict) -> dict:
    """Simulator output vs the onnxruntime fp32 reference: min cosine, max |diff|."""
    import numpy as np

    cosines, diffs = [], []
    for out, ref in zip(files["outputs"], files["references"], strict=True):
        a = np.load(out).astype(np.float64).ravel()
        b = np.load(ref).astype(np.float64).ravel()
        if a.size != b.size:
            raise BackendError(f"simulator output has {a.size} values, onnxruntime {b.size}")
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
        diffs.append(float(np.abs(a - b).max()))
    return {"sim_cosine_min": min(cosines), "sim_max_abs_diff": max(diffs),
            "sim_inputs": len(cosines)}  # fmt: skip


# --------------------------------------------------------------------------- manifest


def build_manifest(spec: dict, cfg: AsrRknnConfig, events: list, sim: dict, out: Path) -> dict:
    """``rknn_manifest.json``: toolkit, platform, the calls, step results, simulator agreement."""
    start = next((e for e in events if e["event"] == "start"), {})
    artifact = out / RKNN_FILE
    return {
        "backend": "rknn",
        "toolkit_version": start.get("toolkit_version", "unknown"),
        "toolkit_python": start.get("python", "unknown"),
        "target_platform": cfg.target_platform,
        "do_quantization": cfg.do_quantization,
        "dtype": cfg.quantized_dtype if cfg.do_quantization else "float16",
        "encoder": Path(spec["model"]).name,
        "input": {"name": spec["input"], "shape": spec["shape"]},
        # step durations are metrics (rknn_<op>_s): an artifact holds no timings
        "steps": [{k: e[k] for k in ("op", "ret")} for e in events if e["event"] == "step"],
        "simulator": sim,
        "artifact": RKNN_FILE,
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
    }


def _metrics(manifest: dict, events: list) -> dict:
    metrics = {"rknn_size_mb": round(manifest["bytes"] / 1e6, 3)}
    for step in (e for e in events if e["event"] == "step"):
        metrics[f"rknn_{step['op']}_s"] = step["seconds"]
    for key, value in manifest["simulator"].items():
        metrics[f"rknn_{key}"] = value
    logger.info("rknn %s on %s: %s", manifest["dtype"], manifest["target_platform"], metrics)
    return metrics
