"""wav2vec2 (``Wav2Vec2ForCTC``): random init with a character vocabulary, checkpoint copy, export.

The offline default is a tiny ``Wav2Vec2ForCTC`` from a config with seeded random weights and
the 32-symbol English character vocabulary of ``facebook/wav2vec2-base-960h`` (written here, so
a hub checkpoint and the random one share ids). Its WER is meaningless. The exported directory
holds ``model.onnx`` (``input_values`` -> ``logits``, optimum task
``automatic-speech-recognition``), the processor files and ``engine.json`` naming the engine
``ort_ctc`` (``rkpipe.engines.ort_ctc``: greedy CTC decoding).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from rkpipe.config.schema import AsrInitConfig
from rkpipe.errors import AsrError
from rkpipe.io import write_json_atomic

logger = logging.getLogger(__name__)

TASK = "automatic-speech-recognition"
MODEL_FILE = "model.onnx"
ENGINE = "ort_ctc"
# facebook/wav2vec2-base-960h's vocab.json, in id order ("|" is the word delimiter).
CHAR_VOCAB = (
    "<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D",
    "L", "U", "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z",
)  # fmt: skip
BLANK_ID = 0  # <pad> is the CTC blank
SAMPLING_RATE = 16000


def random_wav2vec2(init: AsrInitConfig, seed: int) -> Any:
    """A ``Wav2Vec2ForCTC`` with seeded random weights over :data:`CHAR_VOCAB`.

    ``init.d_model``/``encoder_layers``/``attention_heads``/``ffn_dim`` size the transformer,
    ``conv_dim`` every feature-extractor convolution, ``conv_pos_kernel``/``conv_pos_groups``
    the positional convolution. Raises :class:`AsrError` if ``init.vocab_size`` is not 32 or
    ``d_model`` is not divisible by ``attention_heads`` and ``conv_pos_groups``.
    """
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    if init.vocab_size != len(CHAR_VOCAB):
        raise AsrError(
            f"asr.init.vocab_size must be {len(CHAR_VOCAB)} for wav2vec2 (the character "
            f"vocabulary), got {init.vocab_size}"
        )
    for divisor in (init.attention_heads, init.conv_pos_groups):
        if init.d_model % divisor:
            raise AsrError(
                f"asr.init.d_model={init.d_model} must be divisible by attention_heads and "
                f"conv_pos_groups (got {init.attention_heads}, {init.conv_pos_groups})"
            )
    config = Wav2Vec2Config(
        vocab_size=init.vocab_size,
        hidden_size=init.d_model,
        num_hidden_layers=init.encoder_layers,
        num_attention_heads=init.attention_heads,
        intermediate_size=init.ffn_dim,
        conv_dim=(init.conv_dim,) * 7,
        num_conv_pos_embeddings=init.conv_pos_kernel,
        num_conv_pos_embedding_groups=init.conv_pos_groups,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        pad_token_id=BLANK_ID,
        bos_token_id=1,
        eos_token_id=2,
        ctc_loss_reduction="mean",
    )
    torch.manual_seed(seed)
    return Wav2Vec2ForCTC(config).eval()


def build_ctc_processor() -> Any:
    """A ``Wav2Vec2Processor``: base-960h's feature extractor settings and character tokenizer."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.json"
        vocab.write_text(json.dumps({tok: i for i, tok in enumerate(CHAR_VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab),
            unk_token="<unk>",
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            word_delimiter_token="|",
            do_lower_case=False,
        )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLING_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=False,
    )
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def run_ctc_export(model_dir: Path, out: Path) -> None:
    """optimum ONNX export (task ``automatic-speech-recognition``) of ``model_dir`` into ``out``.

    The positional convolution's weight norm is folded first (exactly: the weight is computed
    once), so the exported conv weight is an initializer a quantizer can convert, not a
    ``g * v / ||v||`` subgraph. optimum validates the export against the torch model. Raises
    :class:`AsrError` when the export fails or writes no ``model.onnx``.
    """
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import Wav2Vec2ForCTC

    try:
        model = Wav2Vec2ForCTC.from_pretrained(model_dir, dtype="float32").eval()
        fold_weight_norm(model)
        onnx_export_from_model(model, out, task=TASK, device="cpu")
    except Exception as exc:  # optimum raises many unrelated types; keep the cause
        raise AsrError(f"optimum export of {model_dir} ({TASK}) failed: {exc}") from exc
    if not (out / MODEL_FILE).is_file():
        raise AsrError(f"optimum export did not write {MODEL_FILE} into {out}")


def fold_weight_norm(model: Any) -> bool:
    """Remove the weight norm of ``model``'s positional conv in place; True if there was one."""
    import torch

    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    parametrize = torch.nn.utils.parametrize
    if parametrize.is_parametrized(conv, "weight"):
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        return True
    if hasattr(conv, "weight_g"):
        torch.nn.utils.remove_weight_norm(conv)
        return True
    return False


def write_ctc_engine_files(model_dir: Path, out: Path, random_weights: bool | None) -> dict:
    """Write ``engine.json`` for ``rkpipe.engines.ort_ctc`` and copy the processor files.

    Reads ``config.json`` and the processor of ``model_dir``. Returns the engine info. Raises
    :class:`AsrError` if the processor cannot be loaded.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Processor

    try:
        processor = Wav2Vec2Processor.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise AsrError(f"cannot load the wav2vec2 processor from {model_dir}: {exc}") from exc
    processor.save_pretrained(out)
    info = ctc_engine_info(Wav2Vec2Config.from_pretrained(model_dir), processor, random_weights)
    write_json_atomic(out / "engine.json", info)
    return info


def ctc_engine_info(config: Any, processor: Any, random_weights: bool | None) -> dict:
    """The constants ``engine.json`` holds for a CTC model (pure: from loaded HF objects)."""
    tokenizer, extractor = processor.tokenizer, processor.feature_extractor
    vocab = tokenizer.get_vocab()
    id_to_token = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        id_to_token[index] = token
    specials = [tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens]
    return {
        "architecture": "wav2vec2",
        "engine": ENGINE,
        "random_weights": random_weights,
        "sampling_rate": int(extractor.sampling_rate),
        "do_normalize": bool(extractor.do_normalize),
        "blank_id": int(config.pad_token_id),
        "word_delimiter": tokenizer.word_delimiter_token,
        "special_ids": sorted({int(i) for i in specials}),
        "id_to_token": id_to_token,
        "vocab_size": int(config.vocab_size),
        "d_model": int(config.hidden_size),
        "encoder_layers": int(config.num_hidden_layers),
    }
