"""Block-quantized weights in onnxruntime's ``MatMulNBits`` layout, and the graph surgery.

A :class:`BlockWeight` holds an ``[N, K]`` weight (``y = x @ W.T``) as unsigned ``bits``-bit
codes ``q`` in blocks of ``block_size`` along K, with one scale per block, optional integer
zero points (default ``2**(bits-1)`` as in onnxruntime) and an optional per-block residual::

    W[n, b*block + i] = scale[n, b] * (q[n, b, i] - zp[n, b]) + residual[n, b]

The residual is what lets a GGUF Q4_1 block (``d*q + m``) be carried exactly: onnxruntime only
has integer zero points, so ``m`` is split into ``-d*zp`` and ``r = m + d*zp``. It is added by a
side branch, ``(x @ E) @ R``, where ``E`` sums the activations over each block, or (residual
mode ``folded``) folded into the MatMulNBits itself: the block sums are appended to ``x`` as
extra K columns and ``R`` becomes extra 4-bit blocks of the weight (:func:`fold_residual`), which
costs one ``Concat`` per distinct input instead of a ``MatMul`` + ``Add`` per projection and
reads ``R`` at 4 instead of 32 bits, at a small error (``|R_q - R|``, see :func:`quantize_mse`).

:class:`NBitsRewriter` swaps weight ``MatMul`` nodes for ``MatMulNBits`` (+ residual branch)
and embedding ``Gather`` nodes for ``GatherBlockQuantized`` reading the *same* initializers,
so a tied embedding / lm_head is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"


@dataclass
class BlockWeight:
    """An ``[N, K]`` weight in MatMulNBits layout (see the module docstring).

    ``packed``: uint8 ``[N, k_blocks, block_size*bits/8]`` (element ``2j`` in the low nibble of
    byte ``j`` for 4 bits); ``scales``: float32 ``[N, k_blocks]``; ``zero_points``: uint8
    ``[N, k_blocks]`` unpacked codes or None (default ``2**(bits-1)``); ``residual``: float32
    ``[N, k_blocks]`` or None; ``source``: where it came from (a GGUF tensor name ...).
    """

    packed: np.ndarray
    scales: np.ndarray
    bits: int
    block_size: int
    zero_points: np.ndarray | None = None
    residual: np.ndarray | None = None
    source: str = ""

    @property
    def n(self) -> int:
        """Output features (rows of W)."""
        return int(self.packed.shape[0])

    @property
    def k(self) -> int:
        """Input features (columns of W), a multiple of ``block_size``."""
        return int(self.packed.shape[1] * self.block_size)

    @property
    def k_blocks(self) -> int:
        return int(self.packed.shape[1])

    def codes(self) -> np.ndarray:
        """Unsigned codes ``q`` as uint8 ``[N, k_blocks, block_size]``."""
        return unpack_codes(self.packed, self.bits)

    def zero_point_codes(self) -> np.ndarray:
        """Zero points as uint8 ``[N, k_blocks]`` (the default filled in when absent)."""
        if self.zero_points is not None:
            return self.zero_points
        return np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.uint8)

    def dequantize(self) -> np.ndarray:
        """The float32 ``[N, K]`` weight the graph computes with (module docstring formula)."""
        q = self.codes().astype(np.float32)
        zp = self.zero_point_codes().astype(np.float32)[..., None]
        w = self.scales[..., None] * (q - zp)
        if self.residual is not None:
            w = w + self.residual[..., None]
        return w.reshape(self.n, self.k).astype(np.float32, copy=False)

    def take_rows(self, order: np.ndarray) -> BlockWeight:
        """A copy with rows (output features) reordered as ``W[order]``."""
        pick = lambda a: None if a is None else np.ascontiguousarray(a[order])  # noqa: E731
        return replace(
            self,
            packed=pick(self.packed),
            scales=pick(self.scales),
            zero_points=pick(self.zero_points),
            residual=pick(self.residual),
        )


def concat_rows(weights: list[BlockWeight]) -> BlockWeight:
    """Stack weights along N (for fused q/k/v or gate/up projections).

    Raises:
        ValueError: the weights differ in K, bits or block size.
    """
    first = weights[0]
    if any((w.k, w.bits, w.block_size) != (first.k, first.bits, first.block_size) for w in weights):
        raise ValueError("concat_rows: weights differ in K, bits or block_size")
    if len(weights) == 1:
        return first
    has_zp = any(w.zero_points is not None for w in weights)
    has_res = any(w.residual is not None for w in weights)
    return BlockWeight(
        packed=np.concatenate([w.packed for w in weights]),
        scales=np.concatenate([w.scales for w in weights]),
        bits=first.bits,
        block_size=first.block_size,
        zero_points=np.concatenate([w.zero_point_codes() for w in weights]) if has_zp else None,
        residual=np.concatenate([_residual(w) for w in weights]) if has_res else None,
        source="+".join(w.source for w in weights),
    )


def _residual(w: BlockWeight) -> np.ndarray:
    return w.residual if w.residual is not None else np.zeros_like(w.scales)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits blobs ``[..., blob]`` -> codes ``[..., blob*8/bits]`` (uint8)."""
    if bits == 8:
        return packed
    if bits != 4:
        raise ValueError(f"unsupported bits={bits}; expected 4 or 8")
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``[..., block]`` (uint8, < 2**bits) -> MatMulNBits blobs ``[..., block*bits/8]``."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return np.ascontiguousarray(codes)
    if bits != 4:
        raise ValueError(f"unsupported bits={bits}; expected 4 or 8")
    return np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4))


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """Zero-point codes ``[N, k_blocks]`` -> MatMulNBits input ``[N, ceil(k_blocks*bits/8)]``."""
    if bits == 8:
        return np.ascontiguousarray(zp.astype(np.uint8))
    if zp.shape[1] % 2:
        zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), dtype=np.uint8)], axis=1)
    return pack_codes(zp, 4)


def _weight_blocks(w: np.ndarray, bits: int, block_size: int, caller: str) -> np.ndarray:
    """``w`` ``[N, K]`` as float32 ``[N, K / block_size, block_size]``; checks bits and K."""
    if bits not in (4, 8):
        raise ValueError(f"{caller}: bits={bits}; expected 4 or 8")
    n, k = w.shape
    if k % block_size:
        raise ValueError(f"{caller}: K={k} is not a multiple of block_size={block_size}")
    return np.asarray(w, dtype=np.float32).reshape(n, k // block_size, block_size)


def quantize_rtn(w: np.ndarray, bits: int, block_size: int, source: str = "") -> BlockWeight:
    """Round-to-nearest symmetric block quantization of a float ``[N, K]`` weight.

    Scale ``absmax / (2**(bits-1) - 1)`` per block, codes ``round(w/scale) + 2**(bits-1)`` and
    the default zero point (no ``zero_points`` tensor), so ``GatherBlockQuantized`` and
    ``MatMulNBits`` agree on it.

    Raises:
        ValueError: K is not a multiple of ``block_size`` or ``bits`` is not 4 or 8.
    """
    blocks = _weight_blocks(w, bits, block_size, "quantize_rtn")
    qmax = (1 << (bits - 1)) - 1
    scales = (np.abs(blocks).max(axis=-1) / qmax).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    codes = np.clip(np.rint(blocks / safe), -qmax - 1, qmax) + (1 << (bits - 1))
    return BlockWeight(
        pack_codes(codes.astype(np.uint8), bits), scales, bits, block_size, source=source
    )


def quantize_mse(
    w: np.ndarray, bits: int, block_size: int, source: str = "", steps: int = 41
) -> BlockWeight:
    """Like :func:`quantize_rtn` (symmetric, default zero point) but each block's scale is the
    one of ``steps`` candidates that minimises the block's squared error, and the codes use the
    whole unsigned range (``-2**(bits-1) .. 2**(bits-1)-1`` around the zero point). Scales range
    over ``absmax / (2**(bits-1) + 0.5) .. absmax / (2**(bits-1) - 1.5)``: a value is off by at
    most half a scale unless clipped (then by at most ``absmax - (2**(bits-1) - 1) * scale``).

    Raises:
        ValueError: K is not a multiple of ``block_size`` or ``bits`` is not 4 or 8.
    """
    blocks = _weight_blocks(w, bits, block_size, "quantize_mse")
    half = 1 << (bits - 1)
    absmax = np.abs(blocks).max(axis=-1)
    best_err = np.full(absmax.shape, np.inf, dtype=np.float32)
    best_scale = absmax / (half - 1)
    for ratio in np.linspace(half - 1.5, half + 0.5, steps):  # absmax / ratio
        scale = absmax / np.float32(ratio)
        safe = np.where(scale == 0, 1.0, scale)[..., None]
        q = np.clip(np.rint(blocks / safe), -half, half - 1)
        err = ((q * safe - blocks) ** 2).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    best_scale = best_scale.astype(np.float32)
    safe = np.where(best_scale == 0, 1.0, best_scale)[..., None]
    codes = np.clip(np.rint(blocks / safe), -half, half - 1) + half
    return BlockWeight(
        pack_codes(codes.astype(np.uint8), bits), best_scale, bits, block_size, source=source
    )


def fold_residual(w: BlockWeight) -> BlockWeight:
    """``w`` with its per-block residual carried as extra 4-bit blocks along K.

    The input must then be ``x_ext = [x, x @ E]`` (:func:`block_sum_matrix`: the block sums of
    ``x``, zero-padded to a whole number of blocks), so ``x_ext @ fold_residual(w).dequantize().T
    ~= x @ w.dequantize().T``. The residual ``R [N, k_blocks]`` is quantized with
    :func:`quantize_mse` (4 bits, blocks of ``block_size`` along k_blocks); the error of the
    effective weight is ``|R_q - R|`` per block: at most half a residual scale, or under 18 % of
    the largest ``|R|`` of its residual block where MSE-optimal clipping applies.

    Raises:
        ValueError: ``w`` has no residual or is not 4-bit.
    """
    if w.residual is None or w.bits != 4:
        raise ValueError("fold_residual: needs a 4-bit weight with a residual")
    padded = _padded_blocks(w)
    res = np.zeros((w.n, padded), dtype=np.float32)
    res[:, : w.k_blocks] = w.residual
    extra = quantize_mse(res, 4, w.block_size, source=w.source)
    return BlockWeight(
        packed=np.concatenate([w.packed, extra.packed], axis=1),
        scales=np.concatenate([w.scales, extra.scales], axis=1),
        bits=4,
        block_size=w.block_size,
        zero_points=np.concatenate([w.zero_point_codes(), extra.zero_point_codes()], axis=1),
        source=w.source,
    )


def folded_weight(w: BlockWeight, folded: BlockWeight) -> np.ndarray:
    """The ``[N, K]`` weight a folded MatMulNBits computes with on the original input:
    ``w`` without residual, plus the 4-bit residual each block's sum is multiplied by."""
    main = replace(w, residual=None).dequantize()
    extra = folded.dequantize()[:, w.k : w.k + w.k_blocks]  # R_q [N, k_blocks]
    return main + np.repeat(extra, w.block_size, axis=1)


def block_sum_matrix(k: int, block_size: int, padded_blocks: int) -> np.ndarray:
    """``E [K, padded_blocks]``: ``(x @ E)[b]`` sums ``x`` over block ``b`` (0 past K)."""
    k_blocks = k // block_size
    ones = np.kron(np.eye(k_blocks, dtype=np.float32), np.ones((block_size, 1), dtype=np.float32))
    out = np.zeros((k, padded_blocks), dtype=np.float32)
    out[:, :k_blocks] = ones
    return out


def _padded_blocks(w: BlockWeight) -> int:
    return -(-w.k_blocks // w.block_size) * w.block_size


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
        padded = _padded_blocks(w)
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
