"""Quantization of an exported ASR model (Whisper or wav2vec2) with onnxruntime's quantizers.

Schemes (``asr.quant.scheme``; ``asr.quant.encoder_scheme`` may give the encoder another one):

* ``dynamic``: the seed's ``quantize_dynamic`` (MatMul -> DynamicQuantizeLinear + MatMulInteger,
  int8 weights ``weight_type`` QInt8/QUInt8, optionally ``per_channel``) on ``op_types``;
* ``static_qdq``: ``quantize_static`` in QDQ format: int8 weights and ``activation_type``
  activations whose ranges come from calibration inputs (see :mod:`rkpipe.asr.calibration`:
  synthesized clips that are not the eval clips). Only MatMuls with a constant weight are
  quantized (``MatMulConstBOnly``); attention score products stay fp32;
* ``matmul_nbits4`` / ``matmul_nbits8``: ``MatMulNBitsQuantizer``: 4- or 8-bit block-wise
  weights (``block_size``, ``symmetric``, ``accuracy_level``; level 4 quantizes activations per
  block at run time); with ``Gather`` in ``op_types`` the 4-bit scheme makes the embedding a
  ``GatherBlockQuantized`` (onnxruntime has no 8-bit one: ``matmul_nbits8`` refuses ``Gather``
  and re-ties the embedding to its 8-bit LM head instead).

Two Whisper traps handled here:

* ``quantize_dynamic`` on ``decoder_model_merged.onnx`` quantizes nothing (its weights sit in If
  subgraphs) and says nothing. The split decoders are quantized and re-merged with
  ``optimum.onnx.merge_decoders(strict=False)`` instead.
* optimum exports the tied LM head as ``MatMul(x, Transpose(embed_tokens))``; the quantizers only
  quantize a MatMul whose weight is an initializer, so the largest MatMul (vocab x d_model) would
  stay fp32. Before quantizing, such a Transpose of an initializer is folded into a transposed
  initializer copy. The embedding Gather would keep its own fp32 copy (for whisper-base 106 MB
  per decoder file); with ``tie_embedding`` (default) the int8 schemes re-tie it to the int8
  LM-head weight (:mod:`rkpipe.asr.tie`), so one int8 copy remains. With ``Gather`` in
  ``op_types`` the quantizer makes a second, separate int8 (or 4-bit) copy instead.

After quantization :func:`op_counts` must find no MatMul left with a constant fp32 weight in any
file (If branches included), else :class:`AsrError`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from rkpipe.asr.graph import fold_transposed_weights, op_counts
from rkpipe.asr.quantizers import QUANTIZERS, SCHEMES, config_problems
from rkpipe.config.schema import AsrQuantConfig
from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, onnx_size_mb
from rkpipe.progress import track

logger = logging.getLogger(__name__)

SPLIT_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
MERGED_FILE = "decoder_model_merged.onnx"
ONNX_FILES = (*SPLIT_FILES, MERGED_FILE)
WEIGHT_TYPES = ("QInt8", "QUInt8")
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


def quantize_asr(fp32_dir: Path, out_dir: Path, q: AsrQuantConfig) -> dict:
    """Quantize the fp32 ASR ONNX export in ``fp32_dir`` into ``out_dir`` (atomically).

    The architecture comes from ``fp32_dir/engine.json``: Whisper's encoder and both split
    decoders are quantized and the decoders re-merged; wav2vec2's ``model.onnx`` is quantized.
    Each file uses ``q.scheme`` (the encoder ``q.encoder_scheme`` if set); ``static_qdq``
    first synthesizes calibration clips (espeak-ng + sox). Engine/tokenizer files are copied.
    Returns metrics: ``scheme``, ``encoder_scheme``, ``quantize_s``, ``size_mb``,
    ``fp32_size_mb``, ``size_ratio`` (ONNX files only) and ``ops`` per file (see
    :func:`op_counts`). Raises :class:`AsrError` for an unsupported scheme, weight type or
    calibration method, a missing input file, missing calibration tools, or a MatMul weight
    left in fp32 after quantization.
    """
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    _check_config(q)
    files = quantized_files(fp32_dir)
    _check_inputs(fp32_dir, files)
    start = time.perf_counter()
    feeds = _calibration(fp32_dir, q, files)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in track(files, f"quantizing the ASR files ({q.scheme})"):
            quantize_file(fp32_dir / name, tmp / name, q, file_scheme(name, q), feeds.get(name))
        if MERGED_FILE in _onnx_names(fp32_dir):
            merge_split_decoders(tmp)
        _copy_aux_files(fp32_dir, tmp)
        seconds = time.perf_counter() - start
        ops = {name: op_counts(tmp / name) for name in _onnx_names(tmp)}
        _check_quantized(ops, q)
        size_mb = onnx_size_mb(tmp)
    fp32_mb = onnx_size_mb(fp32_dir)
    metrics = {
        "scheme": q.scheme,
        "encoder_scheme": q.encoder_scheme or q.scheme,
        "quantize_s": round(seconds, 3),
        "size_mb": round(size_mb, 3),
        "fp32_size_mb": round(fp32_mb, 3),
        "size_ratio": round(size_mb / fp32_mb, 4),
        "ops": ops,
    }
    logger.info(
        "quantized %s -> %s (%s, %.1f -> %.1f MB) in %.1f s",
        fp32_dir,
        out_dir,
        q.scheme,
        fp32_mb,
        size_mb,
        seconds,
    )
    return metrics


def quantized_files(fp32_dir: Path) -> tuple[str, ...]:
    """The ONNX files quantization rewrites, by the architecture in ``fp32_dir/engine.json``.

    Raises :class:`AsrError` when ``engine.json`` is missing or names an unknown architecture.
    """
    from rkpipe.asr.architectures import of_export

    return of_export(Path(fp32_dir)).quantized_files


def file_scheme(name: str, q: AsrQuantConfig) -> str:
    """The scheme for ONNX file ``name``: ``q.encoder_scheme`` for the encoder if set."""
    if q.encoder_scheme and name in _encoder_files():
        return q.encoder_scheme
    return q.scheme


def _encoder_files() -> set[str]:
    from rkpipe.asr.architectures import ARCHITECTURES

    return {ARCHITECTURES.get(name).encoder_file for name in ARCHITECTURES.names()}


def _onnx_names(model_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(model_dir).glob("*.onnx"))


def _check_config(q: AsrQuantConfig) -> None:
    for scheme, key in ((q.scheme, "scheme"), (q.encoder_scheme, "encoder_scheme")):
        if scheme is not None and scheme not in SCHEMES:
            raise AsrError(f"asr.quant.{key} must be one of {SCHEMES}, got {scheme!r}")
    for value, key in ((q.weight_type, "weight_type"), (q.activation_type, "activation_type")):
        if value not in WEIGHT_TYPES:
            raise AsrError(f"asr.quant.{key} must be one of {WEIGHT_TYPES}, got {value!r}")
    if q.calibrate_method not in CALIBRATE_METHODS:
        raise AsrError(
            f"asr.quant.calibrate_method must be one of {CALIBRATE_METHODS}, "
            f"got {q.calibrate_method!r}"
        )
    if not q.op_types:
        raise AsrError("asr.quant.op_types is empty; use e.g. [MatMul] or [MatMul, Gather]")
    problems = config_problems(q)
    if problems:
        raise AsrError("; ".join(problems))
    if q.block_size < 16 or q.block_size & (q.block_size - 1):
        raise AsrError(f"asr.quant.block_size must be a power of 2 >= 16, got {q.block_size}")


def _check_inputs(fp32_dir: Path, files: tuple[str, ...]) -> None:
    missing = [n for n in (*files, "engine.json") if not (fp32_dir / n).is_file()]
    if missing:
        raise AsrError(f"{fp32_dir} lacks {missing}: run the ASR export stage first")


def _calibration(fp32_dir: Path, q: AsrQuantConfig, files: tuple[str, ...]) -> dict:
    """Calibration feeds per file, for the files whose scheme is ``static_qdq`` (else {})."""
    static = [name for name in files if file_scheme(name, q) == "static_qdq"]
    if not static:
        return {}
    from rkpipe.asr.calibration import calibration_clips, calibration_feeds

    clips = calibration_clips(q.calib_sentences, q.calib_clips)
    feeds = calibration_feeds(fp32_dir, clips)
    logger.info(
        "calibration: %d synthesized clips -> %s",
        len(clips),
        {name: len(feeds[name]) for name in static},
    )
    return {name: feeds[name] for name in static}


# --------------------------------------------------------------------------- per file


def quantize_file(
    src: Path, dst: Path, q: AsrQuantConfig, scheme: str, feeds: list | None = None
) -> None:
    """Quantize one ONNX file ``src`` into ``dst`` with ``scheme`` (see the module doc).

    ``feeds`` (calibration input dicts) is required for ``static_qdq``. Raises
    :class:`AsrError` when the quantizer fails (naming the file and scheme).
    """
    import onnx

    model = onnx.load(str(src))
    folded = fold_transposed_weights(model) if "MatMul" in q.op_types else []
    if folded:
        logger.info("%s: folded Transpose into MatMul weight(s): %s", src.name, folded)
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    try:
        quantizer = QUANTIZERS[scheme]
        if quantizer.in_memory:
            quantizer.run(model, dst, q, large, feeds)
        else:
            _run_staged(quantizer, model, dst, q, large, feeds)
        if folded and q.tie_embedding and "Gather" not in q.op_types:
            _retie(dst, folded, large)
    except AsrError:
        raise
    except Exception as exc:  # onnxruntime raises plain Exceptions with useful text
        raise AsrError(f"{scheme} quantization failed on {src.name}: {exc}") from exc


def _run_staged(quantizer, model, dst: Path, q: AsrQuantConfig, large: bool, feeds) -> None:
    """Run a quantizer that re-reads its input from disk, on a staged copy of ``model``."""
    import onnx

    staged = dst.with_name(f".{dst.stem}.folded.onnx")
    onnx.save(model, str(staged), save_as_external_data=large)
    del model
    try:
        quantizer.run(staged, dst, q, large, feeds)
    finally:
        for path in staged.parent.glob(f"{staged.name}*"):
            path.unlink()


def _retie(path: Path, folded: list[str], large: bool) -> None:
    """Let the embedding lookup read the quantized LM-head weight (see :mod:`rkpipe.asr.tie`)."""
    import onnx

    from rkpipe.asr.tie import retie_embeddings

    model = onnx.load(str(path))
    tied = retie_embeddings(model, folded)
    if tied:
        onnx.save(model, str(path), save_as_external_data=large)
        logger.info("%s: embedding lookup re-tied to the int8 LM head: %s", path.name, tied)


def merge_split_decoders(model_dir: Path) -> None:
    """Merge ``decoder_model.onnx`` and ``decoder_with_past_model.onnx`` into the merged file."""
    from optimum.onnx import merge_decoders

    decoder = model_dir / "decoder_model.onnx"
    with_past = model_dir / "decoder_with_past_model.onnx"
    # merge_decoders saves (external data past 2 GB) and checks the model; it needs save_path.
    merge_decoders(decoder, with_past, save_path=model_dir / MERGED_FILE, strict=False)


def _copy_aux_files(fp32_dir: Path, out: Path) -> None:
    for path in sorted(fp32_dir.iterdir()):
        if path.is_file() and path.suffix != ".onnx" and not path.name.endswith(".onnx_data"):
            shutil.copy2(path, out / path.name)


def _check_quantized(ops: dict, q: AsrQuantConfig) -> None:
    if "MatMul" not in q.op_types:
        return
    left = {name: c["matmul_const_fp32"] for name, c in ops.items() if c["matmul_const_fp32"]}
    if left:
        raise AsrError(f"fp32 MatMul weights left after {q.scheme} quantization: {left}")
