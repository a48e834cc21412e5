"""Graph surgery for block-quantized weights (:mod:`rkpipe.backends.ort.blocks`).

:class:`NBitsRewriter` swaps weight ``MatMul`` nodes for ``MatMulNBits`` (+ residual branch)
and embedding ``Gather`` nodes for ``GatherBlockQuantized`` reading the *same* initializers,
so a tied embedding / lm_head is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rkpipe.backends.ort.blocks import (
    BlockWeight,
    block_sum_matrix,
    fold_residual,
    pack_zero_points,
    padded_blocks,
)

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


@dataclass
class _Shared:
    """Initializer names of one BlockWeight once written into the graph."""

    packed: str
    scales: str
    zero_points: str | None
    residual: str | None


@dataclass
class NBitsRewriter:
    """Replace weight MatMul / embedding Gather nodes of an ONNX graph by block-quantized ops.

    Plan replacements with :meth:`matmul` / :meth:`gather`, then :meth:`apply`, which rebuilds
    the node list in order (replacements sit where the replaced node was, so the graph stays
    topologically sorted), writes each BlockWeight's initializers once, and removes the float
    weights nobody reads any more.
    """

    model: Any
    accuracy_level: int = 0  # of 4-bit (and 2-bit) MatMulNBits
    accuracy_level_8bit: int = 4  # of 8-bit ones: level 0 is a slow fp32 path in ORT 1.32
    residual_mode: str = "branch"  # branch: exact side branch; folded: see fold_residual
    _plans: dict[int, tuple[str, BlockWeight]] = field(default_factory=dict)
    _shared: dict[int, _Shared] = field(default_factory=dict)
    _block_sums: dict[tuple[str, int, int], str] = field(default_factory=dict)
    _folded: dict[int, BlockWeight] = field(default_factory=dict)
    _new_inits: list[Any] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"matmul": 0, "gather": 0})

    def matmul(self, node: Any, weight: BlockWeight) -> None:
        """Plan ``MatMul(x, B)`` -> ``MatMulNBits`` where ``B == weight.dequantize().T``."""
        self._plans[id(node)] = ("matmul", weight)

    def gather(self, node: Any, weight: BlockWeight) -> None:
        """Plan ``Gather(W, ids)`` -> ``GatherBlockQuantized``; ``W == weight.dequantize()``."""
        self._plans[id(node)] = ("gather", weight)

    def apply(self) -> dict[str, int]:
        """Rewrite the graph in place; return counts of replaced ``matmul`` / ``gather`` nodes."""
        from onnx import helper

        graph = self.model.graph
        self._names = {o for n in graph.node for o in n.output}
        self._names |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
        nodes = []
        for node in graph.node:
            plan = self._plans.get(id(node))
            if plan is None:
                nodes.append(node)
            elif plan[0] == "matmul":
                nodes.extend(self._matmul_nodes(node, plan[1]))
            else:
                nodes.extend(self._gather_nodes(node, plan[1]))
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self._new_inits)
        prune(graph)
        if not any(o.domain == MS_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return dict(self.counts)

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def _init(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._fresh(base)
        self._new_inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _shared_names(self, w: BlockWeight, base: str) -> _Shared:
        if id(w) not in self._shared:
            zp = None if w.zero_points is None else pack_zero_points(w.zero_points, w.bits)
            self._shared[id(w)] = _Shared(
                packed=self._init(f"{base}.qweight", w.packed),
                scales=self._init(f"{base}.scales", w.scales.astype(np.float32)),
                zero_points=None if zp is None else self._init(f"{base}.qzeros", zp),
                residual=None
                if w.residual is None
                else self._init(f"{base}.residual", np.ascontiguousarray(w.residual.T)),
            )
        return self._shared[id(w)]

    def _matmul_nodes(self, node: Any, w: BlockWeight) -> list[Any]:
        from onnx import helper

        base = _base_name(node)
        x = node.input[0]
        nodes: list[Any] = []
        if w.residual is not None and self.residual_mode == "folded":
            nodes, x = self._folded_input(x, w, base)
            if id(w) not in self._folded:
                self._folded[id(w)] = fold_residual(w)
            w = self._folded[id(w)]
        names = self._shared_names(w, base)
        out = node.output[0]
        main_out = self._fresh(f"{base}.nbits_out") if w.residual is not None else out
        inputs = [x, names.packed, names.scales]
        if names.zero_points:
            inputs.append(names.zero_points)
        attrs = {"K": w.k, "N": w.n, "bits": w.bits, "block_size": w.block_size}
        level = self.accuracy_level_8bit if w.bits == 8 else self.accuracy_level
        if level:
            attrs["accuracy_level"] = level
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                inputs,
                [main_out],
                name=self._fresh(f"{base}_Q{w.bits}"),
                domain=MS_DOMAIN,
                **attrs,
            )
        )
        if w.residual is not None:
            nodes += self._residual_nodes(node.input[0], w, names.residual, main_out, out, base)
        self.counts["matmul"] += 1
        return nodes

    def _folded_input(self, x: str, w: BlockWeight, base: str) -> tuple[list[Any], str]:
        """``[x, x @ E]`` (block sums appended along K), made once per distinct ``x``."""
        from onnx import helper

        key = ("__folded__" + x, w.k, w.block_size)
        if key in self._block_sums:
            return [], self._block_sums[key]
        padded = padded_blocks(w)
        e_key = ("__E_folded__", w.k, w.block_size)
        if e_key not in self._block_sums:
            self._block_sums[e_key] = self._init(
                f"block_sum_{w.k}x{padded}", block_sum_matrix(w.k, w.block_size, padded)
            )
        sums, ext = self._fresh(f"{base}.block_sums"), self._fresh(f"{base}.x_ext")
        nodes = [
            helper.make_node(
                "MatMul", [x, self._block_sums[e_key]], [sums], name=self._fresh(f"{base}_BlockSum")
            ),
            helper.make_node(
                "Concat", [x, sums], [ext], axis=-1, name=self._fresh(f"{base}_FoldResidual")
            ),
        ]
        self._block_sums[key] = ext
        return nodes, ext

    def _residual_nodes(
        self, x: str, w: BlockWeight, residual: str | None, main_out: str, out: str, base: str
    ) -> list[Any]:
        """``out = main_out + (x @ E) @ R``; ``x @ E`` (block sums) is shared between users of x."""
        from onnx import helper

        nodes = []
        key = (x, w.k, w.block_size)
        if key not in self._block_sums:
            ones = np.kron(
                np.eye(w.k_blocks, dtype=np.float32), np.ones((w.block_size, 1), dtype=np.float32)
            )
            sums = self._fresh(f"{base}.block_sums")
            nodes.append(
                helper.make_node(
                    "MatMul",
                    [x, self._block_sum_matrix(ones, w)],
                    [sums],
                    name=self._fresh(f"{base}_BlockSum"),
                )
            )
            self._block_sums[key] = sums
        res = self._fresh(f"{base}.residual_out")
        nodes.append(
            helper.make_node(
                "MatMul",
                [self._block_sums[key], residual],
                [res],
                name=self._fresh(f"{base}_Residual"),
            )
        )
        nodes.append(
            helper.make_node("Add", [main_out, res], [out], name=self._fresh(f"{base}_AddResidual"))
        )
        return nodes

    def _block_sum_matrix(self, ones: np.ndarray, w: BlockWeight) -> str:
        key = ("__E__", w.k, w.block_size)
        if key not in self._block_sums:
            self._block_sums[key] = self._init(f"block_sum_{w.k}x{w.k_blocks}", ones)
        return self._block_sums[key]

    def _gather_nodes(self, node: Any, w: BlockWeight) -> list[Any]:
        """``GatherBlockQuantized`` on the shared ``[N, k_blocks, blob]`` data, reshaped to K."""
        from onnx import helper

        if w.residual is not None:
            raise ValueError(f"{node.name}: a Gather cannot carry a residual term")
        base = _base_name(node)
        names = self._shared_names(w, base)
        ids = node.input[1]
        scales3 = self._fresh(f"{base}.scales3d")
        nodes = [
            helper.make_node(
                "Reshape",
                [
                    names.scales,
                    self._init(
                        f"{base}.scales3d_shape", np.array([w.n, w.k_blocks, 1], dtype=np.int64)
                    ),
                ],
                [scales3],
                name=self._fresh(f"{base}_ScalesTo3D"),
            )
        ]
        inputs = [names.packed, ids, scales3]
        if w.zero_points is not None:  # GatherBlockQuantized packs one zero point per byte here
            inputs.append(self._init(f"{base}.gather_zeros", w.zero_points[..., None]))
        blocks = self._fresh(f"{base}.gathered_blocks")
        nodes.append(
            helper.make_node(
                "GatherBlockQuantized",
                inputs,
                [blocks],
                name=self._fresh(f"{base}_Q{w.bits}"),
                domain=MS_DOMAIN,
                bits=w.bits,
                block_size=w.block_size,
                gather_axis=0,
                quantize_axis=2,
            )
        )
        shape, out_shape = self._fresh(f"{base}.ids_shape"), self._fresh(f"{base}.out_shape")
        nodes.append(helper.make_node("Shape", [ids], [shape], name=self._fresh(f"{base}_Shape")))
        k_const = self._init(f"{base}.k", np.array([w.k], dtype=np.int64))
        nodes.append(
            helper.make_node(
                "Concat",
                [shape, k_const],
                [out_shape],
                axis=0,
                name=self._fresh(f"{base}_OutShape"),
            )
        )
        nodes.append(
            helper.make_node(
                "Reshape",
                [blocks, out_shape],
                [node.output[0]],
                name=self._fresh(f"{base}_Flatten"),
            )
        )
        self.counts["gather"] += 1
        return nodes


def _base_name(node: Any) -> str:
    name = node.name or node.output[0]
    return name.strip("/").replace("/", ".")


def prune(graph: Any) -> None:
    """Drop nodes whose outputs nobody reads (not graph outputs) and unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | _subgraph_inputs(graph.node)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


def _subgraph_inputs(nodes: Iterable[Any]) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= {i for n in sub.node for i in n.input}
    return names


def weight_value(graph: Any, name: str, inits: dict[str, Any]) -> np.ndarray | None:
    """The constant value behind ``name``: an initializer, or a Transpose of one (else None)."""
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    producer = next((n for n in graph.node if name in n.output), None)
    if producer is None or producer.op_type != "Transpose" or producer.input[0] not in inits:
        return None
    perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), None)
    return numpy_helper.to_array(inits[producer.input[0]]).transpose(perm)


def weight_nodes(graph: Any) -> tuple[list[Any], list[Any]]:
    """``(matmuls, gathers)``: MatMul nodes whose B, and Gather nodes whose data, is a constant
    2-D weight: an initializer or a Transpose of one."""
    inits = {t.name: t for t in graph.initializer}
    transposed = {
        o for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits for o in n.output
    }
    matmuls = [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and (n.input[1] in inits or n.input[1] in transposed)
        and _rank(inits, n.input[1], graph) == 2
    ]
    gathers = [
        n
        for n in graph.node
        if n.op_type == "Gather"
        and (n.input[0] in inits or n.input[0] in transposed)
        and _rank(inits, n.input[0], graph) == 2
    ]
    return matmuls, gathers


def _rank(inits: dict[str, Any], name: str, graph: Any) -> int:
    if name in inits:
        return len(inits[name].dims)
    producer = next(n for n in graph.node if name in n.output)
    return len(inits[producer.input[0]].dims)
