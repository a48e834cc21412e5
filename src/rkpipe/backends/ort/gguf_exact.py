"""The ``gguf_exact`` scheme: carry a GGUF's own quantized blocks into MatMulNBits, losslessly.

The float model of a GGUF source is the GGUF de-quantized, so re-quantizing it onto a new grid
only adds error. Instead each quantized GGUF tensor is re-encoded block for block:

* ``Q4_1`` (``x = d*q + m``): codes ``q``, scale ``d``, integer zero point
  ``zp = clip(round(-m/d), 0, 15)`` and per-block residual ``r = m + d*zp`` (added by a small
  side branch, see :mod:`.nbits`), so ``d*(q - zp) + r == d*q + m`` bit for bit in float32;
* ``Q4_0`` (``x = d*(q - 8)``): codes and scale, default zero point 8;
* ``Q8_0`` (``x = d*q``, int8): codes ``q + 128`` as 8-bit MatMulNBits, default zero point 128.

Variants (``q4_1_mode``, ``embedding_bits``; not lossless, for speed):

* ``folded``: the Q4_1 residual folded into the MatMulNBits as extra 4-bit K blocks
  (:func:`~rkpipe.backends.ort.blocks.fold_residual`): no side branch per projection;
* ``mse``: no residual at all: per block the scale, integer zero point and codes minimising the
  squared error against ``d*q + m`` (:func:`residual_free`);
* ``embedding_bits=4``: the Q8_0 embedding / lm_head re-quantized to 4 bits with a per-block
  MSE-optimal scale (:func:`~rkpipe.backends.ort.blocks.quantize_mse`).

llama.cpp stores the q/k projections with rows permuted per head; both orders are offered and
the graph's own weights decide. Tensors are matched to the graph by value (never by name):
each weight ``MatMul`` B (or ``Transpose`` of one) and embedding ``Gather`` table must equal a
GGUF tensor's de-quantized values exactly, so the same code serves optimum's export (separate
q/k/v) and onnxruntime-genai's builder graph (fused qkv / gate-up: concatenated tensors).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rkpipe.backends.ort.blocks import BlockWeight, concat_rows, pack_codes, quantize_mse
from rkpipe.backends.ort.nbits import NBitsRewriter, weight_nodes, weight_value
from rkpipe.backends.ort.schemes import EMBEDDING_BITS, GGUF_BLOCK_SIZE, Q4_1_MODES
from rkpipe.errors import BackendError

log = logging.getLogger(__name__)

BLOCK = GGUF_BLOCK_SIZE
Q4_0, Q4_1, Q8_0 = "Q4_0", "Q4_1", "Q8_0"
SUPPORTED_TYPES = (Q4_0, Q4_1, Q8_0)
PERMUTED_TENSORS = ("attn_q.weight", "attn_k.weight")


def encode_blocks(raw: np.ndarray, ggml_type: str, source: str = "") -> BlockWeight:
    """Re-encode the raw GGUF blocks of one 2-D tensor (uint8 ``[N, bytes_per_row]``).

    Raises:
        ValueError: ``ggml_type`` is not one of :data:`SUPPORTED_TYPES`.
    """
    n = raw.shape[0]
    if ggml_type == Q8_0:
        blocks = raw.reshape(n, -1, 34)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        codes = (blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return BlockWeight(pack_codes(codes, 8), d, 8, BLOCK, source=source)
    if ggml_type == Q4_0:
        blocks = raw.reshape(n, -1, 18)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        return BlockWeight(
            pack_codes(_ggml_nibbles(blocks[..., 2:]), 4), d, 4, BLOCK, source=source
        )
    if ggml_type == Q4_1:
        return _encode_q4_1(raw.reshape(n, -1, 20), source)
    raise ValueError(
        f"GGUF type {ggml_type} has no exact MatMulNBits form; supported: "
        f"{', '.join(SUPPORTED_TYPES)}"
    )


def _ggml_nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16 bytes per block (element j low nibble, j+16 high nibble) -> 32 codes."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _encode_q4_1(blocks: np.ndarray, source: str) -> BlockWeight:
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(d == 0, 0.0, np.clip(np.rint(-m / d), 0, 15))
    zp = zp.astype(np.uint8)
    residual = (m + d * zp.astype(np.float32)).astype(np.float32)
    codes = _ggml_nibbles(blocks[..., 4:])
    return BlockWeight(
        pack_codes(codes, 4), d, 4, BLOCK, zero_points=zp, residual=residual, source=source
    )


def residual_free(w: BlockWeight, steps: int = 25, spread: float = 0.12) -> BlockWeight:
    """A 4-bit weight with a residual re-encoded without one: per block the scale (from
    ``steps`` candidates within ``+-spread`` of the original, each then least-squares refit),
    integer zero point and re-rounded codes minimising the squared error against
    ``w.dequantize()``. Lossy (a Q4_1 grid offset by a fraction of a step is not on any
    integer-zero-point grid); the error is at most the residual-dropping one (``|r|``).
    """
    if w.residual is None:
        return w
    x = w.dequantize().reshape(w.n, w.k_blocks, w.block_size)
    zp0 = w.zero_point_codes().astype(np.float32)
    best_s, best_zp = w.scales.copy(), zp0.copy()
    best_q = w.codes().astype(np.float32)
    best_err = ((w.scales[..., None] * (best_q - zp0[..., None]) - x) ** 2).sum(-1)
    top = float((1 << w.bits) - 1)
    for ratio in np.linspace(1 - spread, 1 + spread, steps):
        s = w.scales * np.float32(ratio)
        safe = np.where(s == 0, 1.0, s)
        centre = np.rint(-x.min(-1) / safe)
        for shift in (-1.0, 0.0, 1.0):
            zp = np.clip(centre + shift, 0, top)
            q = np.clip(np.rint(x / safe[..., None]) + zp[..., None], 0, top)
            c = q - zp[..., None]
            den = (c * c).sum(-1)
            fit = np.where(den > 0, (x * c).sum(-1) / np.maximum(den, 1e-30), s)
            for cand in (s, fit.astype(np.float32)):
                err = ((cand[..., None] * c - x) ** 2).sum(-1)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best_s = np.where(better, cand, best_s)
                best_zp = np.where(better, zp, best_zp)
                best_q = np.where(better[..., None], q, best_q)
    return BlockWeight(
        pack_codes(best_q.astype(np.uint8), w.bits),
        best_s.astype(np.float32),
        w.bits,
        w.block_size,
        zero_points=best_zp.astype(np.uint8),
        source=w.source,
    )


def unpermute_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row order undoing llama.cpp's q/k permutation: ``W_hf = W_gguf[order]``."""
    half = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, half, 2).transpose(0, 2, 1).reshape(-1)


@dataclass
class GgufWeights:
    """The re-encoded quantized tensors of a GGUF file, with de-quantized values to match by."""

    path: Path
    weights: dict[str, BlockWeight] = field(default_factory=dict)
    # candidates for matching: (tensor name, variant) -> (weight, fp32 [N, K] values)
    variants: dict[tuple[str, str], tuple[BlockWeight, np.ndarray]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> ggml type left as is
    exact: bool = True

    def index(self) -> dict[tuple[int, bytes], list[tuple[str, str]]]:
        """(K, digest of row 0) -> candidate keys of :attr:`variants`."""
        table: dict[tuple[int, bytes], list[tuple[str, str]]] = {}
        for key, (_, values) in self.variants.items():
            table.setdefault((values.shape[1], _row_digest(values[0])), []).append(key)
        return table


def load_gguf_weights(path: Path) -> GgufWeights:
    """Read every 2-D quantized tensor of the GGUF at ``path`` and re-encode it exactly.

    Each encoding is checked against gguf-py's own de-quantization (bit-exact).

    Raises:
        BackendError: the file cannot be read, or an encoding is not bit-exact.
    """
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises assorted types on bad files
        raise BackendError(
            f"gguf_exact: cannot read GGUF {path}: {type(exc).__name__}: {exc}"
        ) from exc
    heads = _head_counts(reader)
    out = GgufWeights(Path(path))
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        if len(tensor.shape) != 2 or qtype in ("F32", "F16", "BF16"):
            continue
        if qtype not in SUPPORTED_TYPES:
            out.skipped[tensor.name] = qtype
            continue
        raw = np.asarray(tensor.data)
        weight = encode_blocks(raw, qtype, tensor.name)
        values = weight.dequantize()
        reference = dequantize(raw, tensor.tensor_type).reshape(values.shape)
        if not np.array_equal(values, reference):
            diff = float(np.abs(values - reference).max())
            raise BackendError(
                f"gguf_exact: re-encoding {tensor.name} ({qtype}) is not exact "
                f"(max |diff| {diff:g}); refusing to produce a lossy model"
            )
        out.weights[tensor.name] = weight
        _add_variants(out, tensor.name, weight, values, heads)
    log.info(
        "gguf_exact: %d tensors re-encoded from %s (%d of other types left: %s)",
        len(out.weights),
        path.name,
        len(out.skipped),
        sorted(set(out.skipped.values())),
    )
    return out


def _head_counts(reader: Any) -> dict[str, int]:
    """``{"attn_q.weight": n_head, "attn_k.weight": n_head_kv}`` from the GGUF metadata."""

    def field_int(key: str) -> int | None:
        f = reader.fields.get(key)
        return None if f is None else int(f.contents())

    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else "llama"
    n_head = field_int(f"{arch}.attention.head_count")
    n_kv = field_int(f"{arch}.attention.head_count_kv") or n_head
    return {"attn_q.weight": n_head or 0, "attn_k.weight": n_kv or 0}


def _add_variants(
    out: GgufWeights, name: str, weight: BlockWeight, values: np.ndarray, heads: dict[str, int]
) -> None:
    out.variants[(name, "stored")] = (weight, values)
    suffix = next((s for s in PERMUTED_TENSORS if name.endswith(s)), None)
    n_head = heads.get(suffix or "", 0)
    if suffix and n_head and weight.n % (2 * n_head) == 0:
        order = unpermute_order(weight.n, n_head)
        out.variants[(name, "unpermuted")] = (weight.take_rows(order), values[order])


def _row_digest(row: np.ndarray) -> bytes:
    """Digest of a float32 row, with -0.0 and 0.0 hashed alike."""
    row = np.ascontiguousarray(row, dtype=np.float32) + np.float32(0.0)
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


@dataclass
class MatchReport:
    """What :func:`apply_gguf_exact` did."""

    matmuls: int = 0
    gathers: int = 0
    unmatched_matmuls: list[str] = field(default_factory=list)
    unmatched_gathers: list[str] = field(default_factory=list)
    unused_tensors: list[str] = field(default_factory=list)
    # every match is np.array_equal between the graph's weight and the re-encoded values
    max_abs_diff: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "gguf_matmuls": self.matmuls,
            "gguf_gathers": self.gathers,
            "gguf_unmatched_matmuls": len(self.unmatched_matmuls),
            "gguf_unmatched_gathers": len(self.unmatched_gathers),
            "gguf_unused_tensors": len(self.unused_tensors),
            "gguf_max_abs_diff": self.max_abs_diff,
        }


def apply_gguf_exact(
    model: Any,
    gguf: GgufWeights,
    accuracy_level: int = 0,
    accuracy_level_8bit: int = 4,
    q4_1_mode: str = "residual",
    embedding_bits: int = 0,
) -> MatchReport:
    """Replace every weight MatMul / embedding Gather of ``model`` whose constant equals GGUF
    tensors (concatenated along N for fused projections) by their exact block form.

    ``model`` (an ``onnx.ModelProto`` with its data loaded) is changed in place. A tensor used
    by several nodes (a tied embedding and lm_head) is stored once. ``accuracy_level`` is that
    of the 4-bit MatMulNBits (0: fp32 compute, exact), ``accuracy_level_8bit`` of the 8-bit
    ones (Q8_0). ``q4_1_mode`` and ``embedding_bits`` (0 or 4) select the lossy variants of
    the module docstring.

    Raises:
        ValueError: unknown ``q4_1_mode`` or ``embedding_bits``.
        BackendError: no node matched, or a quantized GGUF tensor matched no node (the float
            model was not made from this GGUF).
    """
    if q4_1_mode not in Q4_1_MODES or embedding_bits not in EMBEDDING_BITS:
        raise ValueError(
            f"apply_gguf_exact: q4_1_mode={q4_1_mode!r} (allowed: "
            f"{', '.join(Q4_1_MODES)}), embedding_bits={embedding_bits} (0, 4, 8)"
        )
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    table = gguf.index()
    report = MatchReport()
    rewriter = NBitsRewriter(
        model,
        accuracy_level,
        accuracy_level_8bit,
        residual_mode="folded" if q4_1_mode == "folded" else "branch",
    )
    recoded: dict[int, BlockWeight] = {}

    def recode(w: BlockWeight) -> BlockWeight:
        if id(w) not in recoded:
            if q4_1_mode == "mse" and w.residual is not None:
                recoded[id(w)] = residual_free(w)
            elif embedding_bits == 4 and w.bits == 8 and id(w) in embedding_ids:
                recoded[id(w)] = quantize_mse(w.dequantize(), 4, w.block_size, source=w.source)
            else:
                recoded[id(w)] = w
        return recoded[id(w)]

    embedding_ids: set[int] = set()
    used: set[str] = set()
    matmuls, gathers = weight_nodes(graph)
    gather_parts = []
    for node in gathers:
        parts = _match_columns(weight_value(graph, node.input[0], inits).T, gguf, table)
        if parts is None or len(parts) != 1 or parts[0].residual is not None:
            report.unmatched_gathers.append(node.name)
            continue
        gather_parts.append((node, parts[0]))
        embedding_ids.add(id(parts[0]))
    for node in matmuls:
        value = weight_value(graph, node.input[1], inits)
        parts = _match_columns(value, gguf, table)
        if parts is None:
            report.unmatched_matmuls.append(node.name)
            continue
        parts = [recode(p) for p in parts]
        rewriter.matmul(node, parts[0] if len(parts) == 1 else concat_rows(parts))
        used |= {p.source for p in parts}
    for node, part in gather_parts:
        rewriter.gather(node, recode(part))
        used.add(part.source)
    counts = rewriter.apply()
    report.matmuls, report.gathers = counts["matmul"], counts["gather"]
    report.unused_tensors = sorted(set(gguf.weights) - used)
    _check_report(report, gguf)
    return report


def _match_columns(b: np.ndarray | None, gguf: GgufWeights, table: dict) -> list | None:
    """Split B ``[K, N]`` into GGUF tensors (transposed) along N; None if any column fails."""
    if b is None:
        return None
    k, n = b.shape
    parts: list[BlockWeight] = []
    pos = 0
    while pos < n:
        hit = None
        for key in table.get((k, _row_digest(b[:, pos])), []):
            weight, values = gguf.variants[key]
            rows = values.shape[0]
            if pos + rows <= n and np.array_equal(b[:, pos : pos + rows], values.T):
                hit = weight
                break
        if hit is None:
            return None
        parts.append(hit)
        pos += hit.n
    return parts


def _check_report(report: MatchReport, gguf: GgufWeights) -> None:
    if report.matmuls == 0:
        raise BackendError(
            f"gguf_exact: no weight MatMul of the graph equals a tensor of {gguf.path.name}; "
            "the float model must be this GGUF de-quantized (model.source=gguf or package)"
        )
    if report.unused_tensors:
        shown = ", ".join(report.unused_tensors[:5])
        raise BackendError(
            f"gguf_exact: {len(report.unused_tensors)} quantized tensors of {gguf.path.name} "
            f"match no node of the graph ({shown} ...); the float model was not made from it"
        )
    if report.unmatched_matmuls:
        log.warning(
            "gguf_exact: %d weight MatMuls stay float (no equal GGUF tensor): %s",
            len(report.unmatched_matmuls),
            report.unmatched_matmuls[:5],
        )


def gguf_path_from_manifest(float_model_dir: Path) -> Path:
    """The GGUF file a float model was de-quantized from, per its ``manifest.json``.

    Handles ``source: package`` (file inside an installed package), ``source: gguf`` with a
    local ``path`` or a hub ``repo_id`` (read from the local cache only). The file's sha256
    must equal the manifest's ``gguf_sha256``.

    Raises:
        ConfigError: the model's source is not a GGUF (the scheme does not apply).
        BackendError: the manifest is unreadable, or the file is missing or changed.
    """
    import json

    from rkpipe.errors import ConfigError
    from rkpipe.io import sha256_file

    manifest_path = Path(float_model_dir) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"gguf_exact: cannot read {manifest_path}: {exc}") from exc
    if not manifest.get("gguf_file"):
        raise ConfigError(
            f"quant.ort.scheme=gguf_exact needs a GGUF source; {manifest_path} says "
            f"source={manifest.get('source')!r} without gguf_file: use model.source=gguf or "
            "package, or another scheme"
        )
    path = _locate_gguf(manifest)
    if not path.is_file():
        raise BackendError(f"gguf_exact: GGUF {path} (from {manifest_path}) not found")
    expected = manifest.get("gguf_sha256")
    if expected and sha256_file(path) != expected:
        raise BackendError(
            f"gguf_exact: {path} changed since the float model was made "
            f"(sha256 differs from {manifest_path}); rerun download_llm"
        )
    return path


def _locate_gguf(manifest: dict[str, Any]) -> Path:
    source, name = manifest.get("source"), manifest["gguf_file"]
    if source == "package":
        from rkpipe.llm.sources.package import locate_package

        return locate_package(manifest["package"])[0] / name
    if manifest.get("path"):
        return Path(manifest["path"])
    if manifest.get("repo_id"):
        from huggingface_hub import hf_hub_download

        revision = manifest.get("revision_resolved") or manifest.get("revision")
        try:
            return Path(
                hf_hub_download(manifest["repo_id"], name, revision=revision, local_files_only=True)
            )
        except Exception as exc:  # not in the cache
            raise BackendError(
                f"gguf_exact: {manifest['repo_id']}/{name} is not in the local "
                f"hub cache ({exc}); rerun download_llm"
            ) from exc
    return Path(name)
