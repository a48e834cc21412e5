"""Whisper (encoder-decoder with a KV cache), run by ``rkpipe.engines.ort_whisper``.

Random weights use the multilingual tokenizer built offline (:mod:`rkpipe.asr.whisper_tokenizer`);
the export is optimum's ``automatic-speech-recognition-with-past`` (encoder, decoder, decoder
with past, merged decoder) plus ``mel_filters.npy`` and ``engine.json``. English-only
checkpoints (``*.en``, e.g. the ``package`` source's tiny.en) decode with
``<|startoftranscript|><|notimestamps|>``: their ``engine.json`` says ``multilingual: false``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.asr.architectures.base import AsrArchitecture
from rkpipe.asr.whisper_tokenizer import (
    EOT_ID,
    N_LANGUAGES,
    NO_TIMESTAMPS_ID,
    SOT_ID,
    TRANSCRIBE_ID,
    TRANSLATE_ID,
    VOCAB_SIZE,
    build_whisper_tokenizer,
    load_whisper_tokenizer,
    whisper_version,
)
from rkpipe.config.schema import AsrInitConfig, AsrRknnConfig
from rkpipe.errors import AsrError
from rkpipe.io import write_json_atomic

TASK = "automatic-speech-recognition-with-past"
ONNX_FILES = (
    "encoder_model.onnx",
    "decoder_model.onnx",
    "decoder_with_past_model.onnx",
    "decoder_model_merged.onnx",
)
SPLIT_FILES = ONNX_FILES[:3]  # quantized one by one; the merged decoder is rebuilt from them
MAX_DECODER_STEPS = 24  # teacher-forced steps per clip fed to decoder_with_past


class Whisper(AsrArchitecture):
    name = "whisper"
    label = "Whisper"
    engine = "ort_whisper"
    engine_class = "OrtWhisper"
    export_files = ONNX_FILES
    quantized_files = SPLIT_FILES
    encoder_file = "encoder_model.onnx"
    processor_files = (("preprocessor_config.json",), ("tokenizer.json", "vocab.json"))

    def random_model(self, init: AsrInitConfig, seed: int) -> tuple[Any, Any, str]:
        from transformers import WhisperFeatureExtractor, WhisperProcessor

        processor = WhisperProcessor(WhisperFeatureExtractor(), build_whisper_tokenizer())
        tokenizer = f"openai-whisper {whisper_version()} tiktoken"
        return random_whisper(init, seed), processor, tokenizer

    def hub_classes(self) -> tuple[Any, Any]:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        return WhisperForConditionalGeneration, WhisperProcessor

    def export(self, model_dir: Path, out: Path, random_weights: bool | None) -> None:
        _run_optimum(model_dir, out)
        write_engine_files(model_dir, out, random_weights)
        _check_outputs(out)

    def calibration_feeds(self, engine: Any, fp32_dir: Path, clips: list) -> dict[str, list]:
        return _whisper_feeds(engine, fp32_dir, clips)

    def encoder_spec(self, fp32_dir: Path, info: dict, cfg: AsrRknnConfig) -> dict:
        shape = [1, int(info["n_mels"]), int(info["nb_max_frames"])]
        return {"model": fp32_dir / self.encoder_file, "input": "input_features", "shape": shape}

    def encoder_reference(self, engine: Any, x: Any) -> Any:
        return engine.encode(x)

    def decode_encoder_output(self, engine: Any, output: Any, decoding: dict) -> list[int]:
        return engine.decode_hidden(
            output, decoding["max_new_tokens"], decoding["language"], decoding["task"]
        )


WHISPER = Whisper()


def random_whisper(init: AsrInitConfig, seed: int) -> Any:
    """A ``WhisperForConditionalGeneration`` with seeded random weights and Whisper's token ids.

    The generation config carries ``lang_to_id``/``task_to_id``/``no_timestamps_token_id`` so
    ``model.generate(..., language="en", task="transcribe")`` builds the standard prompt.
    Raises :class:`AsrError` if ``init.vocab_size`` is not 51865 (the offline tokenizer's size).
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    if init.vocab_size != VOCAB_SIZE:
        raise AsrError(
            f"asr.init.vocab_size must be {VOCAB_SIZE} (the multilingual Whisper tokenizer), "
            f"got {init.vocab_size}"
        )
    config = WhisperConfig(
        vocab_size=init.vocab_size,
        num_mel_bins=init.num_mel_bins,
        d_model=init.d_model,
        encoder_layers=init.encoder_layers,
        decoder_layers=init.decoder_layers,
        encoder_attention_heads=init.attention_heads,
        decoder_attention_heads=init.attention_heads,
        encoder_ffn_dim=init.ffn_dim,
        decoder_ffn_dim=init.ffn_dim,
        max_source_positions=init.max_source_positions,
        max_target_positions=init.max_target_positions,
        decoder_start_token_id=SOT_ID,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        pad_token_id=EOT_ID,
        begin_suppress_tokens=None,  # generation settings live in the generation config
        suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    _set_generation_ids(model.generation_config, init.max_target_positions)
    return model


def _set_generation_ids(gen: Any, max_length: int) -> None:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    languages = list(LANGUAGES)[:N_LANGUAGES]
    gen.lang_to_id = {f"<|{code}|>": SOT_ID + 1 + i for i, code in enumerate(languages)}
    gen.task_to_id = {"translate": TRANSLATE_ID, "transcribe": TRANSCRIBE_ID}
    gen.no_timestamps_token_id = NO_TIMESTAMPS_ID
    gen.prev_sot_token_id = 50361
    gen.is_multilingual = True
    gen.max_length = max_length
    gen.begin_suppress_tokens = [220, EOT_ID]
    gen.suppress_tokens = None
    gen.forced_decoder_ids = None
    # Without this, GenerationConfig.from_pretrained drops the Whisper-only keys above.
    gen._from_model_config = False


def _random_processor() -> Any:
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    return WhisperProcessor(WhisperFeatureExtractor(), build_whisper_tokenizer())


def _run_optimum(model_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    try:
        main_export(str(model_dir), output=out, task=TASK, device="cpu")
    except Exception as exc:  # optimum raises many unrelated types; keep the cause
        raise AsrError(f"optimum export of {model_dir} ({TASK}) failed: {exc}") from exc


def _check_outputs(out: Path) -> None:
    missing = [name for name in ONNX_FILES if not (out / name).is_file()]
    if missing:
        raise AsrError(f"optimum export did not write {missing} into {out}")


def write_engine_files(model_dir: Path, out: Path, random_weights: bool | None) -> dict:
    """Write ``mel_filters.npy`` and ``engine.json`` for ``rkpipe.engines.ort_whisper``.

    Reads the feature extractor, ``config.json``, ``generation_config.json`` and (if present) the
    acquire ``manifest.json`` from ``model_dir``. Returns the engine info. Raises
    :class:`AsrError` when the generation config lacks Whisper's language/task ids.
    """
    import numpy as np
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
    np.save(out / "mel_filters.npy", extractor.mel_filters.T.astype(np.float32))
    info = engine_info(
        WhisperConfig.from_pretrained(model_dir),
        GenerationConfig.from_pretrained(model_dir),
        extractor,
        random_weights,
    )
    write_json_atomic(out / "engine.json", info)
    return info


def engine_info(config: Any, gen: Any, extractor: Any, random_weights: bool | None) -> dict:
    """The constants ``engine.json`` holds (pure: built from already-loaded HF objects).

    English-only checkpoints (``*.en``) were trained without language and task tokens: they get
    ``multilingual: false`` and empty ``lang_to_id``/``task_to_id``, and their prompt is
    ``<|startoftranscript|><|notimestamps|>`` (see :func:`english_prompt`).
    """
    multilingual = is_multilingual(config, gen)
    keys = ("lang_to_id", "task_to_id") if multilingual else ()
    keys += ("no_timestamps_token_id",)
    missing = [k for k in keys if getattr(gen, k, None) is None]
    if missing:
        raise AsrError(
            f"generation_config.json lacks {missing}; the engine needs Whisper's language/task "
            f"ids (re-acquire the model with rkpipe)"
        )
    languages = gen.lang_to_id if multilingual else {}
    return {
        "architecture": "whisper",
        "engine": "ort_whisper",
        "random_weights": random_weights,
        "multilingual": multilingual,
        "n_mels": extractor.feature_size,
        "sampling_rate": extractor.sampling_rate,
        "hop_length": extractor.hop_length,
        "n_fft": extractor.n_fft,
        "chunk_length": extractor.chunk_length,
        "n_samples": extractor.n_samples,
        "nb_max_frames": extractor.nb_max_frames,
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": _first(gen.eos_token_id),
        "no_timestamps_token_id": gen.no_timestamps_token_id,
        "lang_to_id": {k.strip("<|>"): v for k, v in languages.items()},
        "task_to_id": dict(gen.task_to_id) if multilingual else {},
        "suppress_tokens": list(getattr(gen, "suppress_tokens", None) or []),
        "begin_suppress_tokens": list(getattr(gen, "begin_suppress_tokens", None) or []),
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "encoder_attention_heads": config.encoder_attention_heads,
        "decoder_attention_heads": config.decoder_attention_heads,
        "d_model": config.d_model,
        "vocab_size": config.vocab_size,
        "max_target_positions": config.max_target_positions,
    }


def is_multilingual(config: Any, gen: Any) -> bool:
    """The generation config's flag, else the vocabulary size (``.en`` models have 51864 ids)."""
    flag = getattr(gen, "is_multilingual", None)
    return bool(flag) if flag is not None else config.vocab_size >= VOCAB_SIZE


def english_prompt(engine: Any) -> list[int]:
    """The prompt that decodes English: ``<|startoftranscript|><|en|><|transcribe|>
    <|notimestamps|>``, or ``<|startoftranscript|><|notimestamps|>`` for an English-only model
    (``engine.json`` ``multilingual: false``), whose training prompt has no language/task."""
    info = engine.info
    if info.get("multilingual", True):
        return engine.prompt_ids("en", "transcribe")
    return [int(info["decoder_start_token_id"]), int(info["no_timestamps_token_id"])]


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _whisper_feeds(engine: Any, fp32_dir: Path, clips: list) -> dict[str, list[dict]]:
    import numpy as np

    tokenizer = load_whisper_tokenizer(fp32_dir)
    feeds: dict[str, list[dict]] = {k: [] for k in SPLIT_FILES}
    prompt = english_prompt(engine)
    for _, audio, text in clips:
        features = engine.features(audio)
        hidden = engine.encode(features)
        tokens = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        tokens = tokens[:MAX_DECODER_STEPS]
        feeds["encoder_model.onnx"].append({"input_features": features})
        sequence = np.asarray([prompt + tokens], dtype=np.int64)
        feeds["decoder_model.onnx"].append({"input_ids": sequence, "encoder_hidden_states": hidden})
        feeds["decoder_with_past_model.onnx"].extend(_past_feeds(engine, hidden, prompt, tokens))
    return feeds


def _past_feeds(engine: Any, hidden: Any, prompt: list[int], tokens: list[int]) -> list[dict]:
    """Teacher-forced ``decoder_with_past`` feeds with the fp32 KV cache of the steps before."""
    import numpy as np

    names = {i.name for i in engine.decoder_with_past.get_inputs()}
    _, past = engine._first_step(hidden, prompt)
    out = []
    for token in tokens:
        feed = {"input_ids": np.asarray([[token]], dtype=np.int64), **past}
        if "encoder_hidden_states" in names:
            feed["encoder_hidden_states"] = hidden
        out.append({k: v for k, v in feed.items() if k in names})
        _, past = engine._next_step(hidden, token, past)
    return out
