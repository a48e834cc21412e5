"""The tied token embedding / lm_head, block-quantized once for both of its readers."""

from __future__ import annotations

from typing import Any

from rkpipe.backends.ort.blocks import quantize_rtn
from rkpipe.backends.ort.nbits import NBitsRewriter, weight_nodes, weight_value


def quantize_tied_embedding(
    model: Any, bits: int, block_size: int, accuracy_level: int, accuracy_level_8bit: int = 4
) -> dict:
    """Block-quantize the token embedding and every MatMul reading it (the tied lm_head).

    The embedding ``Gather`` becomes ``GatherBlockQuantized`` and the lm_head ``MatMul`` a
    ``MatMulNBits`` over the same initializers (RTN, symmetric, :func:`quantize_rtn`), so the
    49152x576 table is stored once. An untied lm_head (its own weight) is left to the scheme.

    Returns ``{"embedding_gathers": n, "embedding_matmuls": n}`` (zeros if no embedding Gather).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    matmuls, gathers = weight_nodes(graph)
    rewriter = NBitsRewriter(model, accuracy_level, accuracy_level_8bit)
    for gather in gathers:
        table = weight_value(graph, gather.input[0], inits)
        if table is None or table.shape[1] % block_size:
            continue
        source = source_initializer(graph, gather.input[0])
        weight = quantize_rtn(table, bits, block_size, source=source)
        rewriter.gather(gather, weight)
        for mm in matmuls:  # the tied lm_head: the same initializer, transposed the other way
            if source_initializer(graph, mm.input[1]) == source and _transposed_pair(
                graph, gather.input[0], mm.input[1]
            ):
                rewriter.matmul(mm, weight)
    counts = rewriter.apply()
    return {"embedding_gathers": counts["gather"], "embedding_matmuls": counts["matmul"]}


def source_initializer(graph: Any, name: str) -> str:
    """The initializer behind ``name``: itself, or the input of the Transpose producing it."""
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "Transpose":
        return producer.input[0]
    return name


def _transposed_pair(graph: Any, gather_data: str, matmul_b: str) -> bool:
    """Whether exactly one of the two reads goes through a Transpose (B == table.T)."""
    return (source_initializer(graph, gather_data) != gather_data) != (
        source_initializer(graph, matmul_b) != matmul_b
    )
