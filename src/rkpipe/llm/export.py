"""Export a Hugging Face causal LM to a float32 ONNX graph with a KV cache (optimum).

The output directory holds ``model.onnx`` (plus ``model.onnx_data`` past 2 GB), the
model's ``config.json`` / ``generation_config.json`` and the tokenizer files copied
byte for byte from the source, so that the directory alone is enough to run it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from rkpipe.errors import BackendError
from rkpipe.io import atomic_path, dir_size_mb
from rkpipe.measure.memory import PeakRss

log = logging.getLogger(__name__)

EXPORT_TASK = "text-generation-with-past"
ONNX_MODEL_FILE = "model.onnx"

# Files (besides the weights) that inference needs next to the graph.
INFERENCE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def model_architecture(model_dir: Path) -> str:
    """Name of the architecture in ``model_dir/config.json`` (``"unknown"`` if unreadable)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    return str(archs[0])


def copy_inference_files(src_dir: Path, dst_dir: Path) -> list[str]:
    """Copy the config and tokenizer files of :data:`INFERENCE_FILES` present in ``src_dir``.

    Returns the names copied. Files already in ``dst_dir`` are overwritten so the
    tokenizer is the source's exactly, not a re-serialisation of it.
    """
    copied = []
    for name in INFERENCE_FILES:
        src = Path(src_dir) / name
        if src.is_file():
            shutil.copy2(src, Path(dst_dir) / name)
            copied.append(name)
    return copied


def export_fp32_onnx(
    model_dir: Path, out_dir: Path, *, trust_remote_code: bool = False, validate: bool = False
) -> dict[str, Any]:
    """Export the HF causal LM in ``model_dir`` to ONNX (fp32, with past) into ``out_dir``.

    Args:
        model_dir: a Hugging Face model directory (config, weights, tokenizer).
        out_dir: the directory to create; replaced atomically, never left half written.
        trust_remote_code: passed to optimum for models with custom code.
        validate: also run optimum's output validation (slower, needs more memory).

    Returns:
        Facts about the export: ``size_mb``, ``model_mb``, ``export_s``, ``peak_rss_mb``,
        ``opset``, ``num_nodes``, ``num_layers``, ``architecture``, ``inputs`` (non-cache
        input names), ``files`` (the output directory) and ``copied_files`` (from the source).

    Raises:
        BackendError: the model directory is missing, optimum fails, or no ``model.onnx``
            is produced; the message names the step and the architecture.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    arch = model_architecture(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BackendError(
            f"ONNX export: {model_dir}/config.json not found (architecture {arch}); "
            "expected a Hugging Face model directory; acquire the model first"
        )
    with atomic_path(out_dir) as tmp, PeakRss() as rss:
        start = time.perf_counter()
        _run_optimum(model_dir, tmp, arch, trust_remote_code, validate)
        export_s = time.perf_counter() - start
        copied = copy_inference_files(model_dir, tmp)
        facts = _graph_facts(tmp / ONNX_MODEL_FILE, arch)
        facts.update(size_mb=round(dir_size_mb(tmp), 3), export_s=round(export_s, 3))
        facts.update(files=sorted(p.name for p in tmp.iterdir()), copied_files=copied)
    facts["peak_rss_mb"] = round(rss.peak_mb, 1)
    log.info("exported %s to %s in %.1f s (%s MB)", arch, out_dir, export_s, facts["size_mb"])
    return facts


def _run_optimum(
    model_dir: Path, tmp: Path, arch: str, trust_remote_code: bool, validate: bool
) -> None:
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise BackendError(
            f"ONNX export of {arch}: optimum is not importable ({exc}); "
            "install it with: pip install optimum-onnx==0.1.0"
        ) from exc
    from rkpipe.progress import step

    try:
        with step(f"exporting {arch} to ONNX with optimum"):
            main_export(
                str(model_dir),
                output=tmp,
                task=EXPORT_TASK,
                device="cpu",
                framework="pt",
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                do_validation=validate,
            )
    except Exception as exc:  # optimum raises many unrelated types
        raise BackendError(
            f"ONNX export of {arch} from {model_dir} failed in optimum main_export "
            f"(task {EXPORT_TASK}): {type(exc).__name__}: {exc}"
        ) from exc
    if not (tmp / ONNX_MODEL_FILE).is_file():
        found = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
        raise BackendError(
            f"ONNX export of {arch}: expected {ONNX_MODEL_FILE} in the output, got {found}; "
            "the architecture may export as several sub-models, which is not supported"
        )


def _graph_facts(model_path: Path, arch: str) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    past = [i.name for i in model.graph.input if i.name.startswith("past_key_values.")]
    return {
        "architecture": arch,
        "opset": int(opset),
        "num_nodes": len(model.graph.node),
        "num_layers": len(past) // 2,
        "inputs": [i.name for i in model.graph.input if not i.name.startswith("past_")],
        "model_mb": round(dir_size_mb(model_path), 3),
    }
