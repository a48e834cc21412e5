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
``DequantizeLinear``) outputs, which share that initializer naming, and for 8-bit
``MatMulNBits`` (``matmul_nbits8``), whose weight ``W_T_Q8`` is ``[vocab, K / block, block]``
uint8 with ``W_T_scales`` ``[vocab, K / block]`` (and optional ``zero_points``, else 128)::

    Gather(W_T_Q8, ids)                 -> [batch, seq, K / block, block]
    (Cast(.) - zero_point[ids]) * scale[ids]   (per block)
    Reshape(., [batch, seq, K])         (then Slice to d_model when K was padded)
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

logger = logging.getLogger(__name__)

FOLDED_SUFFIX = "_transposed_folded"


def retie_embeddings(model: Any, folded: list[str]) -> list[str]:
    """Make every ``Gather`` of a folded weight's source read the quantized copy (in place).

    ``model`` is a quantized ``onnx.ModelProto``; ``folded`` the names
    :func:`rkpipe.asr.graph.fold_transposed_weights` returned. For int8 weights only lookups
    with rank-2 indices (``input_ids`` ``[batch, seq]``) are rewritten.
    Returns the re-tied source names.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tied = []
    for name in folded:
        source = name[: -len(FOLDED_SUFFIX)] if name.endswith(FOLDED_SUFFIX) else None
        replace = _int8_lookup(inits, name) or _nbits8_lookup(graph, inits, name)
        if source not in inits or replace is None:
            continue
        gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == source]
        if replace.func is _replace_gather:  # its Transpose assumes [batch, seq] ids
            gathers = [n for n in gathers if _index_rank(graph, n.input[1]) == 2]
        for node in gathers:
            replace(graph, node)
        if gathers and not any(source in n.input for n in graph.node):
            graph.initializer.remove(inits[source])
            tied.append(source)
    return tied


def _int8_lookup(inits: dict, name: str) -> Any:
    """The re-tie for a MatMulInteger / QDQ weight ``name`` (None when it is not one)."""
    parts = [inits.get(f"{name}{s}") for s in ("_quantized", "_scale", "_zero_point")]
    if parts[0] is None or parts[1] is None:
        return None
    return partial(_replace_gather, weight=parts[0], scale=parts[1], zero_point=parts[2])


def _nbits8_lookup(graph: Any, inits: dict, name: str) -> Any:
    """The re-tie for an 8-bit MatMulNBits weight ``name`` (None when it is not one)."""
    from onnx import helper

    for node in graph.node:
        if node.op_type == "MatMulNBits" and node.input[1] == f"{name}_Q8":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zero_point = inits.get(node.input[3]) if len(node.input) > 3 else None
            packed, scales = inits[node.input[1]], inits[node.input[2]]
            return partial(_replace_gather_nbits8, packed=packed, scales=scales,
                           zero_point=zero_point, k=attrs["K"])  # fmt: skip
    return None


def _replace_gather_nbits8(
    graph: Any, gather: Any, packed: Any, scales: Any, zero_point: Any, k: int
) -> None:
    """Swap ``gather`` for a lookup in the 8-bit block-wise weight, dequantized per block."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    prefix = f"{gather.name or gather.output[0]}/tied"
    ids = gather.input[1]
    padded_k = packed.dims[1] * packed.dims[2]

    def const(suffix: str, array: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(array, f"{prefix}/{suffix}"))
        return f"{prefix}/{suffix}"

    def per_block(param: Any, suffix: str) -> str:
        """``param[ids]`` as float ``[*ids, blocks, 1]``; float scales are read in place (a
        copy would cost 2.5 MB per decoder for tiny.en), uint8 zero points as a float copy."""
        table = param.name
        if param.data_type != TensorProto.FLOAT:
            table = const(suffix, numpy_helper.to_array(param).astype(np.float32))
        table_shape = const(f"{suffix}_shape", np.array([packed.dims[0], -1], dtype=np.int64))
        axis = const(f"{suffix}_axis", np.array([-1]))
        flat, picked, out = (f"{prefix}/{suffix}_{end}" for end in ("2d", "g", "ids"))
        nodes.extend([
            helper.make_node("Reshape", [table, table_shape], [flat]),
            helper.make_node("Gather", [flat, ids], [picked], axis=0),
            helper.make_node("Unsqueeze", [picked, axis], [out]),
        ])  # fmt: skip
        return out

    nodes = [
        helper.make_node("Gather", [packed.name, ids], [f"{prefix}/q"], axis=0),
        helper.make_node("Cast", [f"{prefix}/q"], [f"{prefix}/f"], to=TensorProto.FLOAT),
    ]
    zp = per_block(zero_point, "zp") if zero_point is not None else const("zp", np.float32(128))
    nodes += [
        helper.make_node("Sub", [f"{prefix}/f", zp], [f"{prefix}/c"]),
        helper.make_node("Mul", [f"{prefix}/c", per_block(scales, "scale")], [f"{prefix}/d"]),
        helper.make_node("Shape", [ids], [f"{prefix}/ids_shape"]),
        helper.make_node(
            "Concat",
            [f"{prefix}/ids_shape", const("k", np.array([padded_k]))],
            [f"{prefix}/shape"],
            axis=0,
        ),  # fmt: skip
    ]
    flat = gather.output[0] if padded_k == k else f"{prefix}/padded"
    nodes.append(helper.make_node("Reshape", [f"{prefix}/d", f"{prefix}/shape"], [flat]))
    if padded_k != k:  # K was padded up to whole blocks: drop the padding columns
        starts, ends, axes = (const(n, np.array([v])) for n, v in (("s", 0), ("e", k), ("a", -1)))
        nodes.append(helper.make_node("Slice", [flat, starts, ends, axes], [gather.output[0]]))
    _swap(graph, gather, nodes)


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
    _swap(graph, gather, nodes)


def _swap(graph: Any, gather: Any, nodes: list) -> None:
    """Put ``nodes`` where ``gather`` was (keeping the topological order) and drop it."""
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
