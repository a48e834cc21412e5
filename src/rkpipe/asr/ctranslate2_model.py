"""A CTranslate2 Whisper model directory (``model.bin`` + ``config.json`` + ``tokenizer.json`` +
``vocabulary.txt``, as faster-whisper uses) read with numpy and converted into a Hugging Face
``WhisperForConditionalGeneration`` checkpoint (fp32 safetensors, config, generation config,
tokenizer, feature extractor) that the ASR export reads like any hub checkpoint.

The binary format is read by :mod:`rkpipe.asr.ctranslate2_bin`.

The mapping inverts ``ctranslate2.converters.transformers.WhisperLoader``: self-attention q|k|v
are fused into ``self_attention/linear_0`` (HF's k_proj has no bias, so the fused bias's k third
is zero and is dropped), cross-attention k|v into ``attention/linear_1``, linear weights keep
torch's ``[out, in]`` layout, and ``decoder/projection/weight`` is an alias of the embedding
(tied). Every stored weight is a float16 value widened exactly to float32.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rkpipe.asr.ctranslate2_bin import (
    CT2_FILES,
    DEFAULT_FIX,
    FLOAT_DTYPES,
    GELU,
    MODEL_BIN,
    MULTILINGUAL_VOCAB,
    N_TIMESTAMPS,
    SPEC_NAME,
    SUPPORTED_REVISIONS,
    Ct2Model,
    bad_input,
    read_model_bin,
)
from rkpipe.asr.whisper_tokenizer import read_vocabulary_txt, tokenizer_from_ct2
from rkpipe.errors import AsrError

# --------------------------------------------------------------------------- validation


@dataclass
class Ct2Whisper:
    """A validated CTranslate2 Whisper directory: its model, dimensions and config.json."""

    directory: Path
    model: Ct2Model
    dims: dict[str, Any]
    config: dict[str, Any]


def check_ct2_whisper(ct2_dir: Path, fix: str = DEFAULT_FIX) -> Ct2Whisper:
    """Read and validate a CTranslate2 Whisper directory before any conversion work.

    Raises :class:`AsrError` naming the file for: a missing file, a truncated or corrupt
    ``model.bin``, a spec other than ``WhisperSpec`` (or an unsupported revision), an unknown
    binary version, quantized weights (int8 cannot be widened exactly), dimensions that are not
    Whisper's, or a tokenizer whose size (plus the timestamp tokens) is not the embedding's.
    """
    ct2_dir = Path(ct2_dir)
    model = read_model_bin(ct2_dir / MODEL_BIN, fix)
    _check_spec(model, fix)
    _check_float_weights(model, fix)
    missing = [name for name in CT2_FILES if not (ct2_dir / name).is_file()]
    if missing:
        raise bad_input(ct2_dir, f"missing {missing} beside model.bin", fix)
    dims = infer_dims(model, fix)
    config = _read_json(ct2_dir / "config.json", fix)
    check_vocabulary(ct2_dir, dims["vocab_size"], fix)
    return Ct2Whisper(ct2_dir, model, dims, config)


def _check_spec(model: Ct2Model, fix: str) -> None:
    if model.spec_name != SPEC_NAME:
        raise bad_input(
            model.path,
            f"spec {model.spec_name!r} is not a Whisper model, expected {SPEC_NAME}",
            fix,
        )
    if model.spec_revision not in SUPPORTED_REVISIONS:
        raise bad_input(
            model.path,
            f"{SPEC_NAME} revision {model.spec_revision}, expected one of {SUPPORTED_REVISIONS}",
            fix,
        )


def _check_float_weights(model: Ct2Model, fix: str) -> None:
    """Scalars (num_heads, activation) are ints; a tensor that is not float is quantized."""
    quantized = sorted(
        n for n, v in model.variables.items() if v.ndim and model.dtypes[n] not in FLOAT_DTYPES
    )
    if quantized:
        raise bad_input(
            model.path,
            f"{len(quantized)} quantized tensors (e.g. {quantized[0]!r} is "
            f"{model.dtypes[quantized[0]]}); only float16/float32/bfloat16 models convert exactly",
            fix,
        )


def _read_json(path: Path, fix: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise bad_input(path, f"not readable JSON ({exc})", fix) from exc
    if not isinstance(value, dict):
        raise bad_input(path, f"a JSON {type(value).__name__}, expected an object", fix)
    return value


def infer_dims(model: Ct2Model, fix: str = DEFAULT_FIX) -> dict[str, Any]:
    """Whisper's dimensions read from the variable shapes and the spec's scalars."""
    try:
        vocab, d_model = model.variables[model.resolve("decoder/embeddings/weight")].shape
        dims = {
            "vocab_size": int(vocab),
            "d_model": int(d_model),
            "num_mel_bins": int(_shape(model, "encoder/conv1/weight")[1]),
            "encoder_layers": _count_layers(model, "encoder", fix),
            "decoder_layers": _count_layers(model, "decoder", fix),
            "encoder_attention_heads": model.scalar("encoder/num_heads"),
            "decoder_attention_heads": model.scalar("decoder/num_heads"),
            "encoder_ffn_dim": int(_shape(model, "encoder/layer_0/ffn/linear_0/weight")[0]),
            "decoder_ffn_dim": int(_shape(model, "decoder/layer_0/ffn/linear_0/weight")[0]),
            "max_source_positions": int(_shape(model, "encoder/position_encodings/encodings")[0]),
            "max_target_positions": int(_shape(model, "decoder/position_encodings/encodings")[0]),
            "scale_embedding": bool(model.scalar("decoder/scale_embeddings", 0)),
        }
    except (KeyError, ValueError) as exc:
        raise bad_input(
            model.path, f"not a Whisper model: variable {exc} missing or misshapen", fix
        ) from exc
    _check_dims(model, dims, fix)
    return dims


def _shape(model: Ct2Model, name: str) -> tuple[int, ...]:
    return model.variables[model.resolve(name)].shape


def _count_layers(model: Ct2Model, prefix: str, fix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for n in model.names() if (m := pattern.match(n))}
    if found != set(range(len(found))):
        raise bad_input(model.path, f"{prefix} layer indices {sorted(found)} are not 0..n-1", fix)
    return len(found)


def _check_dims(model: Ct2Model, dims: dict, fix: str) -> None:
    heads = (dims["encoder_attention_heads"], dims["decoder_attention_heads"])
    if min(heads) < 1 or dims["d_model"] % heads[0] or dims["d_model"] % heads[1]:
        raise bad_input(
            model.path, f"d_model {dims['d_model']} not divisible by heads {heads}", fix
        )
    if model.scalar("decoder/activation", GELU) != GELU:
        raise bad_input(model.path, "decoder activation is not GELU: not a Whisper model", fix)
    if model.scalar("decoder/pre_norm", 1) != 1:
        raise bad_input(model.path, "decoder/pre_norm is not 1: not a Whisper model", fix)


def check_vocabulary(ct2_dir: Path, vocab_size: int, fix: str = DEFAULT_FIX) -> int:
    """The tokenizer's size once the timestamp tokens are added; raises if it is not the
    embedding's row count, or if ``vocabulary.txt`` (when present) disagrees."""
    path = Path(ct2_dir) / "tokenizer.json"
    data = _read_json(path, fix)
    tokens = dict(data.get("model", {}).get("vocab") or {})
    tokens.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    size = max(tokens.values(), default=-1) + 1
    # faster-whisper's tokenizer.json omits the timestamps; HF's Whisper tokenizers carry them
    total = size if "<|0.00|>" in tokens else size + N_TIMESTAMPS
    if total != vocab_size:
        raise bad_input(
            path,
            f"{size} tokens + {total - size} timestamp tokens = {total}, but the embedding in "
            f"model.bin has {vocab_size} rows: the tokenizer belongs to another model",
            fix,
        )
    lines = _vocabulary_lines(Path(ct2_dir))
    if lines is not None and len(lines) != vocab_size:
        raise bad_input(
            Path(ct2_dir) / "vocabulary.txt",
            f"{len(lines)} tokens, the embedding has {vocab_size} rows",
            fix,
        )
    return total


def _vocabulary_lines(ct2_dir: Path) -> list[str] | None:
    """CTranslate2's ``vocabulary.txt`` (optional): one token per id."""
    path = ct2_dir / "vocabulary.txt"
    return read_vocabulary_txt(path) if path.is_file() else None


# --------------------------------------------------------------------------- weights


class _StateDict:
    """HF tensors built from CT2 variables, remembering which variables were used."""

    def __init__(self, model: Ct2Model, fix: str) -> None:
        self.model, self.fix = model, fix
        self.tensors: dict[str, np.ndarray] = {}
        self.used: set[str] = set()

    def take(self, name: str) -> np.ndarray:
        self.used.add(name)
        return self.model.float32(name)

    def put(self, key: str, value: np.ndarray) -> None:
        self.tensors[key] = np.ascontiguousarray(value, dtype=np.float32)

    def copy(self, ct2: str, hf: str, bias: bool = True) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/weight"))
        if bias:
            self.put(f"{hf}.bias", self.take(f"{ct2}/bias"))

    def norm(self, ct2: str, hf: str) -> None:
        self.put(f"{hf}.weight", self.take(f"{ct2}/gamma"))
        self.put(f"{hf}.bias", self.take(f"{ct2}/beta"))

    def fused(self, ct2: str, hf: str, parts: str) -> None:
        """Split a fused linear (rows ``parts``, e.g. ``qkv``) into HF projections; the k part
        of the bias must be zero (HF's k_proj has no bias) and is dropped."""
        weights = np.split(self.take(f"{ct2}/weight"), len(parts))
        biases = np.split(self.take(f"{ct2}/bias"), len(parts))
        for part, weight, bias in zip(parts, weights, biases, strict=True):
            self.put(f"{hf}.{part}_proj.weight", weight)
            if part != "k":
                self.put(f"{hf}.{part}_proj.bias", bias)
            elif np.any(bias != 0):
                raise bad_input(
                    self.model.path,
                    f"{ct2}/bias: the k part is not zero (max |b| {np.abs(bias).max()}); HF "
                    "Whisper's k_proj has no bias, so it cannot be converted exactly",
                    self.fix,
                )


def build_state_dict(model: Ct2Model, dims: dict, fix: str = DEFAULT_FIX) -> dict[str, np.ndarray]:
    """The fp32 HF state dict (``proj_out.weight`` included); raises if a weight is left over."""
    sd = _StateDict(model, fix)
    try:
        _encoder(sd, dims["encoder_layers"])
        _decoder(sd, dims["decoder_layers"])
    except (KeyError, ValueError) as exc:
        raise bad_input(
            model.path, f"not a Whisper model: variable {exc} missing or misshapen", fix
        ) from exc
    sd.put("proj_out.weight", sd.take("decoder/projection/weight"))
    leftover = [
        n for n in model.names() if n not in sd.used and model.variables[model.resolve(n)].ndim
    ]
    leftover = [n for n in leftover if not _zero_projection_bias(model, n)]
    if leftover:
        raise bad_input(model.path, f"variables with no Hugging Face counterpart: {leftover}", fix)
    return sd.tensors


def _zero_projection_bias(model: Ct2Model, name: str) -> bool:
    """HF's proj_out has no bias; CTranslate2 may store an all-zero one."""
    return name == "decoder/projection/bias" and not np.any(model.float32(name))


def _encoder(sd: _StateDict, layers: int) -> None:
    sd.copy("encoder/conv1", "model.encoder.conv1")
    sd.copy("encoder/conv2", "model.encoder.conv2")
    sd.put("model.encoder.embed_positions.weight", sd.take("encoder/position_encodings/encodings"))
    for i in range(layers):
        ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _self_attention(sd, ct2, hf)
        _ffn(sd, ct2, hf)
    sd.norm("encoder/layer_norm", "model.encoder.layer_norm")


def _decoder(sd: _StateDict, layers: int) -> None:
    sd.put("model.decoder.embed_tokens.weight", sd.take("decoder/embeddings/weight"))
    sd.put("model.decoder.embed_positions.weight", sd.take("decoder/position_encodings/encodings"))
    for i in range(layers):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention(sd, ct2, hf)
        sd.copy(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
        sd.fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", "kv")
        sd.copy(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        sd.norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        _ffn(sd, ct2, hf)
    sd.norm("decoder/layer_norm", "model.decoder.layer_norm")


def _self_attention(sd: _StateDict, ct2: str, hf: str) -> None:
    sd.fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", "qkv")
    sd.copy(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
    sd.norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")


def _ffn(sd: _StateDict, ct2: str, hf: str) -> None:
    sd.copy(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
    sd.copy(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
    sd.norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")


# --------------------------------------------------------------------------- Hugging Face


WEIGHTS_FILE = "model.safetensors"


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path, fix: str = DEFAULT_FIX) -> dict[str, Any]:
    """Convert a CTranslate2 Whisper directory into a HF checkpoint directory ``out_dir``.

    Everything is validated first (:func:`check_ct2_whisper`, raising :class:`AsrError`); then
    ``model.safetensors`` (fp32, the tied ``proj_out`` stored once), ``config.json``,
    ``generation_config.json``, the tokenizer files and ``preprocessor_config.json`` are written.
    The bytes depend only on the input (and the transformers version that writes the JSON).
    Returns what was read: binary version, spec, revision, variable count, dims, tied.
    """
    whisper = check_ct2_whisper(ct2_dir, fix)
    tensors = build_state_dict(whisper.model, whisper.dims, fix)
    tokenizer = tokenizer_from_ct2(whisper.directory, whisper.dims["vocab_size"])
    tied = np.array_equal(tensors["proj_out.weight"], tensors["model.decoder.embed_tokens.weight"])
    generation = generation_config(whisper.config, tokenizer, whisper.dims)
    config = hf_config(whisper.dims, generation, tied)
    check_complete(config, tensors, fix)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(tensors, out / WEIGHTS_FILE, tied)
    config.save_pretrained(out)
    generation.save_pretrained(out)
    _processor(whisper.dims, tokenizer).save_pretrained(out)
    model = whisper.model
    return {
        "binary_version": model.binary_version,
        "spec": model.spec_name,
        "spec_revision": model.spec_revision,
        "variables": len(model.variables),
        "dims": whisper.dims,
        "tied_embeddings": tied,
    }


def generation_config(ct2_config: dict, tokenizer: Any, dims: dict) -> Any:
    """Greedy decoding settings from CTranslate2's ``config.json`` (suppressed ids, alignment
    heads). English-only models get no ``lang_to_id``/``task_to_id``: their prompt is
    ``<|startoftranscript|><|notimestamps|>``."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    multilingual = dims["vocab_size"] >= MULTILINGUAL_VOCAB
    gen = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=dims["max_target_positions"],
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, eot]),
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=multilingual,
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        lang_ids = ct2_config.get("lang_ids") or []
        gen.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        gen.task_to_id = {task: ids(f"<|{task}|>") for task in ("translate", "transcribe")}
    return gen


def hf_config(dims: dict, gen: Any, tied: bool) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(
        **dims,
        activation_function="gelu",
        tie_word_embeddings=tied,
        decoder_start_token_id=gen.decoder_start_token_id,
        bos_token_id=gen.bos_token_id,
        eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
        begin_suppress_tokens=None,  # decoding settings live in the generation config
        suppress_tokens=None,
        dtype="float32",
        architectures=["WhisperForConditionalGeneration"],
    )


def check_complete(config: Any, tensors: dict[str, np.ndarray], fix: str = DEFAULT_FIX) -> None:
    """Load ``tensors`` strictly into a ``WhisperForConditionalGeneration`` built on the meta
    device (no random init): every HF parameter is mapped, with its shape, and nothing extra."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[:300]
        raise AsrError(
            f"CTranslate2 -> Hugging Face mapping is incomplete: {problem}; {fix}"
        ) from exc


def _save_weights(tensors: dict[str, np.ndarray], path: Path, tied: bool) -> None:
    """safetensors sorts the tensors itself; one fixed metadata key keeps the header stable."""
    from safetensors.numpy import save_file

    stored = {k: v for k, v in tensors.items() if not (tied and k == "proj_out.weight")}
    save_file(stored, str(path), metadata={"format": "pt"})


def _processor(dims: dict, tokenizer: Any) -> Any:
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    extractor = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"])
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
