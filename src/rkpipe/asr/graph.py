"""ONNX graph helpers of the ASR quantizers: fold transposed weights so a quantizer sees them,
and count ops (If-subgraphs included) to check that every constant weight was quantized.

The LLM side has its own (:mod:`rkpipe.backends.ort.graph`): it folds only transposes read by
MatMuls alone and names the folded weight after the Transpose output, so its model files keep
their bytes; its counts are per decode/prefill branch under other metric names.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


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


def op_counts(path: Path) -> dict:
    """Count the ops of an ONNX file, If-subgraphs included.

    Returns op counts (``MatMul``, ``MatMulInteger``, ``DynamicQuantizeLinear``,
    ``QuantizeLinear``, ``DequantizeLinear``, ``MatMulNBits``, ``Gather``,
    ``GatherBlockQuantized``, ``Conv``, ``ConvInteger``) and:

    * ``matmul_const_fp32``: MatMuls whose weight is a constant (an initializer, a Constant
      node, or a Transpose of one, resolved per graph scope): fp32 weights a quantizer should
      have converted. MatMuls of two activations (attention scores) are not counted;
    * ``matmul_qdq``: MatMuls whose weight is a DequantizeLinear of a constant (static QDQ);
    * ``matmul_quantized``: ``MatMulInteger + MatMulNBits + matmul_qdq``.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()
    _count_graph(model.graph, {}, counts)
    counts["matmul_quantized"] = (
        counts["MatMulInteger"] + counts["MatMulNBits"] + counts["matmul_qdq"]
    )
    return {k: counts.get(k, 0) for k in OP_KEYS}


OP_KEYS = (
    "MatMul",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulNBits",
    "Gather",
    "GatherBlockQuantized",
    "Conv",
    "ConvInteger",
    "matmul_const_fp32",
    "matmul_qdq",
    "matmul_quantized",
)


def _count_graph(graph: Any, outer: dict, counts: Counter) -> None:
    """Count ``graph``'s nodes; ``outer`` maps visible names to their kind (see ``_kind``).

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
        if node.op_type == "MatMul" and _is_dequantized_const(node.input[1], scope):
            counts["matmul_qdq"] += 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _count_graph(sub, scope, counts)


def _kind(node: Any) -> str:
    if node.op_type == "Constant":
        return "const"
    if node.op_type in ("Transpose", "DequantizeLinear"):
        return f"{node.op_type}:{node.input[0]}"
    return ""


def _is_const(name: str, scope: dict) -> bool:
    kind = scope.get(name, "")
    if kind.startswith("Transpose:"):
        return scope.get(kind[len("Transpose:") :]) == "const"
    return kind == "const"


def _is_dequantized_const(name: str, scope: dict) -> bool:
    kind = scope.get(name, "")
    return kind.startswith("DequantizeLinear:") and _is_const(kind.split(":", 1)[1], scope)
