"""Dynamic int8 quantization of an exported Whisper (the seed's ``quantize_dynamic`` scheme).

Two traps handled here:

* ``quantize_dynamic`` on ``decoder_model_merged.onnx`` quantizes nothing (its weights sit in If
  subgraphs) and says nothing. The split decoders are quantized and re-merged with
  ``optimum.onnx.merge_decoders(strict=False)`` instead.
* optimum exports the tied LM head as ``MatMul(x, Transpose(embed_tokens))``; the quantizer only
  quantizes a MatMul whose weight is an initializer, so the largest MatMul (vocab x d_model) would
  stay fp32. Before quantizing, such a Transpose of an initializer is folded into a transposed
  initializer copy. The fp32 embedding Gather keeps its own copy unless ``Gather`` is also in
  ``op_types``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rkpipe.config.schema import AsrQuantConfig
from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, dir_size_mb

logger = logging.getLogger(__name__)

SPLIT_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
MERGED_FILE = "decoder_model_merged.onnx"
ONNX_FILES = (*SPLIT_FILES, MERGED_FILE)
WEIGHT_TYPES = ("QInt8", "QUInt8")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def quantize_asr(fp32_dir: Path, out_dir: Path, q: AsrQuantConfig) -> dict:
    """Quantize the fp32 Whisper ONNX in ``fp32_dir`` into ``out_dir`` (atomically).

    Runs ``quantize_dynamic(op_types_to_quantize=q.op_types, weight_type=q.weight_type,
    per_channel=q.per_channel)`` on the encoder and both split decoders, re-merges the decoders,
    and copies the engine/tokenizer files. Returns metrics: ``quantize_s``, ``size_mb``,
    ``fp32_size_mb``, ``size_ratio`` (ONNX files only) and ``ops`` per file (see
    :func:`op_counts`). Raises :class:`AsrError` for an unsupported scheme or weight type, a
    missing input file, or a fp32 MatMul weight left after quantization.
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    weight_type = _check_config(q)
    _check_inputs(fp32_dir)
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in SPLIT_FILES:
            _quantize_file(fp32_dir / name, tmp / name, q, weight_type)
        merge_split_decoders(tmp)
        _copy_aux_files(fp32_dir, tmp)
        seconds = time.perf_counter() - start
        ops = {name: op_counts(tmp / name) for name in ONNX_FILES}
        _check_quantized(ops, q)
        size_mb = onnx_size_mb(tmp)
    fp32_mb = onnx_size_mb(fp32_dir)
    metrics = {
        "quantize_s": round(seconds, 3),
        "size_mb": round(size_mb, 3),
        "fp32_size_mb": round(fp32_mb, 3),
        "size_ratio": round(size_mb / fp32_mb, 4),
        "ops": ops,
    }
    logger.info(
        "quantized %s -> %s (%.1f -> %.1f MB) in %.1f s",
        fp32_dir,
        out_dir,
        fp32_mb,
        size_mb,
        seconds,
    )
    return metrics


def onnx_size_mb(model_dir: Path) -> float:
    """Size in MB of the four Whisper ONNX files (plus any external-data files) in ``model_dir``."""
    files = [p for p in Path(model_dir).iterdir() if p.suffix in (".onnx", ".onnx_data", ".data")]
    return sum(dir_size_mb(p) for p in files)


def _check_config(q: AsrQuantConfig) -> Any:
    from onnxruntime.quantization import QuantType

    if q.scheme != "dynamic":
        raise AsrError(
            f"asr.quant.scheme must be 'dynamic' (onnxruntime quantize_dynamic), got {q.scheme!r}"
        )
    if q.weight_type not in WEIGHT_TYPES:
        raise AsrError(
            f"asr.quant.weight_type must be one of {WEIGHT_TYPES}, got {q.weight_type!r}"
        )
    if not q.op_types:
        raise AsrError("asr.quant.op_types is empty; use e.g. [MatMul] or [MatMul, Gather]")
    return getattr(QuantType, q.weight_type)


def _check_inputs(fp32_dir: Path) -> None:
    missing = [
        n for n in (*SPLIT_FILES, "engine.json", "mel_filters.npy") if not (fp32_dir / n).is_file()
    ]
    if missing:
        raise AsrError(f"{fp32_dir} lacks {missing}: run the ASR export stage first")


def _quantize_file(src: Path, dst: Path, q: AsrQuantConfig, weight_type: Any) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    model = onnx.load(str(src))
    if "MatMul" in q.op_types:
        folded = fold_transposed_weights(model)
        if folded:
            logger.info(
                "%s: folded Transpose into %d MatMul weight(s): %s", src.name, len(folded), folded
            )
    staged = dst.with_name(f".{dst.stem}.folded.onnx")
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save(model, str(staged), save_as_external_data=large)
    try:
        quantize_dynamic(
            model_input=str(staged),
            model_output=str(dst),
            op_types_to_quantize=list(q.op_types),
            per_channel=q.per_channel,
            weight_type=weight_type,
            use_external_data_format=large,
        )
    except Exception as exc:  # onnxruntime raises plain Exceptions with useful text
        raise AsrError(f"quantize_dynamic failed on {src.name}: {exc}") from exc
    finally:
        for path in staged.parent.glob(f"{staged.name}*"):
            path.unlink()


def fold_transposed_weights(model: Any) -> list[str]:
    """Replace ``MatMul(x, Transpose(W))`` (``W`` a 2-D initializer) by ``MatMul(x, W_T)``.

    ``W_T`` is a new initializer holding ``W.T``; a Transpose left without consumers is removed.
    Modifies ``model`` in place and returns the names of the new initializers.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    folded: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        transpose = producers.get(node.input[1])
        if not _is_weight_transpose(transpose, inits):
            continue
        source = transpose.input[0]
        if source not in folded:
            weight = numpy_helper.to_array(inits[source]).T.copy()
            folded[source] = f"{source}_transposed_folded"
            graph.initializer.append(numpy_helper.from_array(weight, folded[source]))
        node.input[1] = folded[source]
    _drop_unused_transposes(graph)
    return sorted(folded.values())


def _is_weight_transpose(node: Any, inits: dict) -> bool:
    if node is None or node.op_type != "Transpose" or node.input[0] not in inits:
        return False
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    return len(inits[node.input[0]].dims) == 2 and perm in ([], [[1, 0]])


def _drop_unused_transposes(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & used]
    for node in dead:
        graph.node.remove(node)


def merge_split_decoders(model_dir: Path) -> None:
    """Merge ``decoder_model.onnx`` and ``decoder_with_past_model.onnx`` into the merged file."""
    from optimum.onnx import merge_decoders

    decoder = model_dir / "decoder_model.onnx"
    with_past = model_dir / "decoder_with_past_model.onnx"
    # merge_decoders saves (external data past 2 GB) and checks the model; it needs save_path.
    merge_decoders(decoder, with_past, save_path=model_dir / MERGED_FILE, strict=False)


def _copy_aux_files(fp32_dir: Path, out: Path) -> None:
    for path in sorted(fp32_dir.iterdir()):
        if path.is_file() and path.suffix != ".onnx" and not path.name.endswith(".onnx_data"):
            shutil.copy2(path, out / path.name)


# --------------------------------------------------------------------------- op counts


def op_counts(path: Path) -> dict:
    """Count the ops of an ONNX file, If-subgraphs included.

    Returns ``{"MatMul", "MatMulInteger", "DynamicQuantizeLinear", "Gather",
    "matmul_const_fp32"}``; ``matmul_const_fp32`` counts MatMuls whose weight is a constant
    (an initializer, a Constant node, or a Transpose of one, resolved per graph scope): fp32
    weights a dynamic int8 quantizer should have converted. MatMuls of two activations
    (attention scores) are not counted there.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()
    _count_graph(model.graph, {}, counts)
    keys = ("MatMul", "MatMulInteger", "DynamicQuantizeLinear", "Gather", "matmul_const_fp32")
    return {k: counts.get(k, 0) for k in keys}


def _count_graph(graph: Any, outer: dict, counts: Counter) -> None:
    """Count ``graph``'s nodes; ``outer`` maps visible names to "const"/"transpose:<input>"/"".

    Names produced in this graph shadow the outer scope (optimum's merged decoder reuses output
    names such as ``present.0.encoder.value`` in both branches).
    """
    scope = dict(outer)
    scope.update({init.name: "const" for init in graph.initializer})
    for node in graph.node:
        scope.update({out: _kind(node) for out in node.output})
    for node in graph.node:
        counts[node.op_type] += 1
        if node.op_type == "MatMul" and _is_const(node.input[1], scope):
            counts["matmul_const_fp32"] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _count_graph(sub, scope, counts)


def _kind(node: Any) -> str:
    if node.op_type == "Constant":
        return "const"
    if node.op_type == "Transpose":
        return f"transpose:{node.input[0]}"
    return ""


def _is_const(name: str, scope: dict) -> bool:
    kind = scope.get(name, "")
    if kind.startswith("transpose:"):
        return scope.get(kind[len("transpose:") :]) == "const"
    return kind == "const"


def _check_quantized(ops: dict, q: AsrQuantConfig) -> None:
    if "MatMul" not in q.op_types:
        return
    left = {name: c["matmul_const_fp32"] for name, c in ops.items() if c["matmul_const_fp32"]}
    if left:
        raise AsrError(f"fp32 MatMul weights left after quantize_dynamic: {left}")
