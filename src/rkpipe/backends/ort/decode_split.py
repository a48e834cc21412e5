"""The decode-branch split: one-token steps get MatMulNBits of their own accuracy level."""

from __future__ import annotations

from typing import Any

import numpy as np


def split_decode_branch(model: Any, decode_level: int, input_name: str = "input_ids") -> int:
    """Run one-token steps (decode) with 4-bit MatMulNBits at ``decode_level``, longer inputs
    (prefill) with the levels the graph has.

    onnxruntime's int8-activation kernels (level 4) are ~4x faster than fp32 compute at M=1
    but slower at M=128 on this host, and one graph serves both. The whole graph becomes the
    two branches of one ``If(sequence length == 1)``; both read the outer graph's initializers
    (the file stays the same size; onnxruntime pre-packs the weights once per branch, so the
    resident memory grows). Values inside the branches are renamed with a ``decode/`` /
    ``prefill/`` prefix. Returns the number of 4-bit MatMulNBits set to ``decode_level``.

    Raises:
        ValueError: the graph has no input ``input_name`` or already holds subgraphs.
    """
    import copy

    from onnx import helper, numpy_helper

    graph = model.graph
    if input_name not in {i.name for i in graph.input}:
        raise ValueError(f"split_decode_branch: the graph has no input {input_name!r}")
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        raise ValueError("split_decode_branch: the graph already holds subgraphs")
    outer = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    changed = 0

    def branch(prefix: str, level: int | None) -> Any:
        nonlocal changed
        nodes = []
        for node in graph.node:
            new = copy.deepcopy(node)
            new.name = prefix + node.name
            del new.input[:]
            new.input.extend(i if i in outer or not i else prefix + i for i in node.input)
            del new.output[:]
            new.output.extend(prefix + o if o else o for o in node.output)
            bits = next((a.i for a in node.attribute if a.name == "bits"), 0)
            if level is not None and node.op_type == "MatMulNBits" and bits == 4:
                for attr in [a for a in new.attribute if a.name == "accuracy_level"]:
                    new.attribute.remove(attr)
                if level:
                    new.attribute.append(helper.make_attribute("accuracy_level", level))
                changed += 1
            nodes.append(new)
        outputs = []
        for out in graph.output:
            value = copy.deepcopy(out)
            value.name = prefix + out.name
            outputs.append(value)
        return helper.make_graph(nodes, prefix.strip("/") + "_branch", [], outputs)

    then_branch, else_branch = branch("decode/", decode_level), branch("prefill/", None)
    one = "decode_branch.one"
    graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), one))
    nodes = [
        helper.make_node(
            "Shape", [input_name], ["decode_branch.seq_len"], start=-1, name="DecodeBranch_Shape"
        ),
        helper.make_node(
            "Equal",
            ["decode_branch.seq_len", one],
            ["decode_branch.is_decode"],
            name="DecodeBranch_Equal",
        ),
        helper.make_node(
            "If",
            ["decode_branch.is_decode"],
            [o.name for o in graph.output],
            then_branch=then_branch,
            else_branch=else_branch,
            name="DecodeBranch_If",
        ),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return changed


def branch_nodes(graph: Any, branch: str = "else_branch") -> list[Any]:
    """The nodes one run executes: those of ``graph``, or for a graph made by
    :func:`split_decode_branch` those of its prefill (``else_branch``) or decode
    (``then_branch``) branch."""
    split = [n for n in graph.node if n.op_type == "If" and n.name == "DecodeBranch_If"]
    if not split:
        return list(graph.node)
    return list(next(a.g for a in split[0].attribute if a.name == branch).node)
