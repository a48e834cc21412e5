"""ONNX graph helpers the onnxruntime schemes share: transpose folding, node counts, saving
past the 2 GB protobuf limit, the decode-branch split, and quiet quantizer logs."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkpipe.config.schema import OrtQuantConfig

PROTOBUF_LIMIT = 2_000_000_000  # bytes; larger models need external data
RESIDUAL_SUFFIXES = ("_Residual", "_BlockSum")


def fold_weight_transposes(model: Any) -> int:
    """Replace ``Transpose(initializer)`` nodes feeding only MatMul B inputs by initializers.

    ``model`` (an ``onnx.ModelProto`` with its data loaded) is changed in place; the
    transposed copy is named after the Transpose output. Returns how many were folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, pos))
    folds = [n for n in graph.node if _is_weight_transpose(n, inits, consumers)]
    for node in folds:
        array = numpy_helper.to_array(inits[node.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        graph.initializer.append(numpy_helper.from_array(array.transpose(perm), node.output[0]))
        graph.node.remove(node)
    return len(folds)


def _is_weight_transpose(node: Any, inits: dict[str, Any], consumers: dict[str, list]) -> bool:
    if node.op_type != "Transpose" or node.input[0] not in inits:
        return False
    uses = consumers.get(node.output[0], [])
    return bool(uses) and all(op == "MatMul" and pos == 1 for op, pos in uses)


def count_ops(model_path: Path) -> dict[str, int]:
    """Counts of quantized vs float MatMul nodes in the ONNX graph at ``model_path``.

    Keys: ``quantized_matmul_count`` (MatMulInteger + MatMulNBits + QDQ-quantized MatMul),
    ``matmul_integer_count``, ``matmul_nbits_count``, ``dynamic_quantize_count``,
    ``qdq_matmul_count`` (MatMul fed by a DequantizeLinear weight), ``gather_quantized_count``
    (GatherBlockQuantized), ``float_matmul_count`` (every remaining MatMul, activations x
    activations and residual branches included), ``float_weight_matmul_count`` (remaining
    MatMul whose B is a float weight, the exact-GGUF residual branches excluded),
    ``residual_matmul_count`` (those branches), ``attention_fused_count``
    (GroupQueryAttention) and ``node_count``.
    """
    import onnx

    from rkpipe.backends.ort.decode_split import branch_nodes

    graph = onnx.load(str(model_path), load_external_data=False).graph
    nodes = branch_nodes(graph)  # a decode/prefill split: the prefill branch
    ops = Counter(n.op_type for n in nodes)
    weights = {t.name for t in graph.initializer}
    weights |= {
        o for n in nodes if n.op_type == "Transpose" and n.input[0] in weights for o in n.output
    }
    dequantized = {
        o
        for n in nodes
        if n.op_type == "DequantizeLinear" and n.input[0] in weights
        for o in n.output
    }
    weight_mms = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in weights]
    residual = sum(1 for n in weight_mms if n.name.endswith(RESIDUAL_SUFFIXES))
    qdq = sum(1 for n in nodes if n.op_type == "MatMul" and n.input[1] in dequantized)
    return {
        "quantized_matmul_count": ops["MatMulInteger"] + ops["MatMulNBits"] + qdq,
        "matmul_integer_count": ops["MatMulInteger"],
        "matmul_nbits_count": ops["MatMulNBits"],
        "dynamic_quantize_count": ops["DynamicQuantizeLinear"],
        "qdq_matmul_count": qdq,
        "gather_quantized_count": ops["GatherBlockQuantized"],
        "float_matmul_count": ops["MatMul"],
        "float_weight_matmul_count": len(weight_mms) - residual,
        "residual_matmul_count": residual,
        "attention_fused_count": ops["GroupQueryAttention"],
        "node_count": len(nodes),
    }


def split_decode(model: Any, cfg: OrtQuantConfig) -> dict[str, int]:
    """Give one-token steps their own 4-bit accuracy level (``decode_accuracy_level``)."""
    if cfg.decode_accuracy_level is None:
        return {}
    from rkpipe.backends.ort.decode_split import split_decode_branch

    return {"decode_branch_matmuls": split_decode_branch(model, cfg.decode_accuracy_level)}


def save_model(model: Any, dst: Path) -> None:
    """Save ``model`` as one file, or with ``model.onnx.data`` beside it past 2 GB."""
    import onnx

    if model.ByteSize() > PROTOBUF_LIMIT:
        onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    else:
        onnx.save(model, str(dst))


@contextlib.contextmanager
def quiet_quantizer_logs() -> Iterator[None]:
    """Silence the quantizers' per-node INFO logs (thousands of lines, some on the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)
