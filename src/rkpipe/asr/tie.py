"""Re-tie a quantized LM head and its token embedding: one int8 copy instead of int8 + fp32.

Whisper ties ``proj_out`` to ``embed_tokens``. To quantize the LM head, rkpipe folds
``Transpose(embed_tokens)`` into a transposed initializer ``W_T`` (``[d_model, vocab]``); the
quantizer stores it as ``W_T_quantized`` (+ ``_scale``, ``_zero_point``), while the embedding
``Gather`` keeps the fp32 table: for whisper-base that is 106 MB per decoder file, most of a
quantized decoder. :func:`retie_embeddings` replaces ``Gather(embed_tokens, ids)`` by a lookup in
the quantized LM-head weight itself::

    Gather(W_T_quantized, ids, axis=1)  -> [d_model, batch, seq]
    Transpose(perm=[1, 2, 0])           -> [batch, seq, d_model]
    (Cast(.) - zero_point[ids]) * scale[ids]   (per-tensor or per-column scale)

and drops the fp32 table. Works for ``quantize_dynamic`` (MatMulInteger) and QDQ (``MatMul`` on
``DequantizeLinear``) outputs, which share that initializer naming.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

FOLDED_SUFFIX = "_transposed_folded"


def retie_embeddings(model: Any, folded: list[str]) -> list[str]:
    """Make every ``Gather`` of a folded weight's source read the quantized copy (in place).

    ``model`` is a quantized ``onnx.ModelProto``; ``folded`` the names
    :func:`rkpipe.asr.graph.fold_transposed_weights` returned. Only lookups with rank-2
    indices (``input_ids`` ``[batch, seq]``) are rewritten. Returns the re-tied source names.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tied = []
    for name in folded:
        source = name[: -len(FOLDED_SUFFIX)] if name.endswith(FOLDED_SUFFIX) else None
        parts = [inits.get(f"{name}{s}") for s in ("_quantized", "_scale", "_zero_point")]
        if source not in inits or parts[0] is None or parts[1] is None:
            continue
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == source]
        gathers = [n for n in gathers if _index_rank(graph, n.input[1]) == 2]
        for node in gathers:
            _replace_gather(graph, node, *parts)
        if gathers and not any(source in n.input for n in graph.node):
            graph.initializer.remove(inits[source])
            tied.append(source)
    return tied


def _index_rank(graph: Any, name: str) -> int | None:
    for value in list(graph.input) + list(graph.value_info):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _replace_gather(graph: Any, gather: Any, weight: Any, scale: Any, zero_point: Any) -> None:
    """Swap ``gather`` for the int8 lookup + dequantization nodes, at the same position."""
    from onnx import TensorProto, helper

    prefix = f"{gather.name or gather.output[0]}/tied"
    ids = gather.input[1]
    nodes = [
        helper.make_node("Gather", [weight.name, ids], [f"{prefix}/q"], axis=1),
        helper.make_node("Transpose", [f"{prefix}/q"], [f"{prefix}/qt"], perm=[1, 2, 0]),
        helper.make_node("Cast", [f"{prefix}/qt"], [f"{prefix}/f"], to=TensorProto.FLOAT),
    ]
    value = f"{prefix}/f"
    if zero_point is not None:
        zp = _float_param(graph, zero_point, f"{prefix}/zp")
        zp_t = _per_id(nodes, graph, zp, ids, f"{prefix}/zp_ids")
        nodes.append(helper.make_node("Sub", [value, zp_t], [f"{prefix}/c"]))
        value = f"{prefix}/c"
    sc = _float_param(graph, scale, f"{prefix}/scale")
    nodes.append(helper.make_node("Mul", [value, _per_id(nodes, graph, sc, ids,
                                                         f"{prefix}/scale_ids")],
                                  [gather.output[0]]))  # fmt: skip
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _float_param(graph: Any, init: Any, name: str) -> tuple[str, int]:
    """A float32 copy of a scale / zero-point initializer; returns (name, rank)."""
    import numpy as np
    from onnx import numpy_helper

    array = numpy_helper.to_array(init).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name, array.ndim


def _per_id(nodes: list, graph: Any, param: tuple[str, int], ids: str, name: str) -> str:
    """A scalar parameter as is; a per-column one gathered by ``ids`` to ``[batch, seq, 1]``."""
    import numpy as np
    from onnx import helper, numpy_helper

    pname, rank = param
    if rank == 0:
        return pname
    axes = f"{name}/axes"
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), axes))
    nodes.append(helper.make_node("Gather", [pname, ids], [f"{name}/g"], axis=0))
    nodes.append(helper.make_node("Unsqueeze", [f"{name}/g", axes], [name]))
    return name
