"""Block-quantized weights in onnxruntime's ``MatMulNBits`` layout: quantize, pack, fold.

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

The graph surgery that writes them into a model is :mod:`rkpipe.backends.ort.nbits`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


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
    padded = padded_blocks(w)
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


def padded_blocks(w: BlockWeight) -> int:
    return -(-w.k_blocks // w.block_size) * w.block_size
