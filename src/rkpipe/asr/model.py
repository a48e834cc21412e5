"""Acquire an ASR checkpoint (random init, hub or local) plus its processor, with a manifest.

Architectures: ``whisper`` (encoder-decoder) and ``wav2vec2`` (CTC, see :mod:`rkpipe.asr.ctc`).
``random_init`` works offline: the weights come from a seeded ``torch`` generator. Whisper's
tokenizer is built from the ``multilingual.tiktoken`` rank file that the PyPI package
``openai-whisper`` ships (``pip install --no-deps openai-whisper``), converted with transformers'
tiktoken converter into a ``WhisperTokenizerFast`` with Whisper's 51865 ids; wav2vec2's is a
character ``Wav2Vec2CTCTokenizer`` from a vocabulary written in :mod:`rkpipe.asr.ctc`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rkpipe.asr.whisper_tokenizer import (
    EOT_ID,
    N_LANGUAGES,
    NO_TIMESTAMPS_ID,
    SOT_ID,
    TRANSCRIBE_ID,
    TRANSLATE_ID,
    VOCAB_SIZE,
    build_whisper_tokenizer,
    whisper_version,
)
from rkpipe.config.schema import AsrConfig, AsrInitConfig
from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("whisper", "wav2vec2")
SOURCES = ("random_init", "hub", "local")
MANIFEST = "manifest.json"

HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def acquire_asr(cfg: AsrConfig, out_dir: Path) -> dict:
    """Write an ASR checkpoint (safetensors), its processor and ``manifest.json`` to ``out_dir``.

    ``cfg.source`` picks ``random_init`` (seeded random weights, offline tokenizer), ``hub``
    (``snapshot_download`` of ``cfg.repo_id`` at ``cfg.revision``, the resolved commit recorded)
    or ``local`` (a directory ``cfg.path``). The directory appears atomically. Returns the
    manifest. Raises :class:`AsrError` for an unknown source or architecture, a missing path,
    an unreachable repository or a missing ``openai-whisper`` package.
    """
    _check_architecture(cfg.architecture)
    if cfg.source not in SOURCES:
        raise AsrError(f"asr.source must be one of {SOURCES}, got {cfg.source!r}")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        origin = _ACQUIRERS[cfg.source](cfg, tmp)
        manifest = _manifest(cfg, tmp, origin)  # no timings: an artifact, equal on every host
        write_json_atomic(tmp / MANIFEST, manifest)
    logger.info(
        "acquired %s (%s, %d parameters) in %.1f s",
        cfg.name,
        cfg.source,
        manifest["parameters"],
        time.perf_counter() - start,
    )
    return manifest


def _check_architecture(architecture: str) -> None:
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise AsrError(
            f"ASR architecture {architecture!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. Set asr.architecture accordingly."
        )


# --------------------------------------------------------------------------- sources


def _acquire_random(cfg: AsrConfig, out: Path) -> dict:
    if not cfg.random_weights:
        logger.warning("asr.source=random_init always gives random weights; recording it")
    if cfg.architecture == "wav2vec2":
        from rkpipe.asr.ctc import build_ctc_processor, random_wav2vec2

        model, processor = random_wav2vec2(cfg.init, cfg.seed), build_ctc_processor()
        tokenizer = "wav2vec2-base-960h character vocabulary"
    else:
        model, processor = random_whisper(cfg.init, cfg.seed), _random_processor()
        tokenizer = f"openai-whisper {whisper_version()} tiktoken"
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {"random_weights": True, "tokenizer": tokenizer}


def _acquire_hub(cfg: AsrConfig, out: Path) -> dict:
    if not cfg.repo_id:
        raise AsrError(
            "asr.source=hub needs asr.repo_id (e.g. openai/whisper-tiny, "
            "facebook/wav2vec2-base-960h)"
        )
    snapshot = _snapshot(cfg.repo_id, cfg.commit or cfg.revision)
    if not any(snapshot.glob("*.safetensors")):
        logger.warning("%s has no safetensors; downloading pytorch_model.bin", cfg.repo_id)
        snapshot = _snapshot(cfg.repo_id, cfg.commit or cfg.revision, ["pytorch_model.bin"])
    _copy_checkpoint(snapshot, out, cfg.architecture)
    return {"repo_id": cfg.repo_id, "revision": cfg.revision, "commit_sha": snapshot.name}


def _acquire_local(cfg: AsrConfig, out: Path) -> dict:
    path = Path(cfg.path) if cfg.path else None
    if path is None or not (path / "config.json").is_file():
        raise AsrError(
            f"asr.source=local needs asr.path to be an ASR checkpoint directory with "
            f"config.json; got {cfg.path!r}"
        )
    _copy_checkpoint(path, out, cfg.architecture)
    return {"path": str(path.resolve())}


_ACQUIRERS = {"random_init": _acquire_random, "hub": _acquire_hub, "local": _acquire_local}


def _snapshot(repo_id: str, revision: str, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns or HUB_PATTERNS
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise AsrError(
            f"could not download {repo_id}@{revision}: {exc}. Check the repo id and revision, "
            f"the network, or use asr=whisper_tiny_random (offline)"
        ) from exc
    return Path(local)  # .../snapshots/<commit sha>


def _copy_checkpoint(src: Path, out: Path, architecture: str) -> None:
    """Load an ASR checkpoint + processor from ``src`` and save them (safetensors) to ``out``.

    Raises :class:`AsrError` when the checkpoint's ``model_type`` is unsupported or is not
    ``architecture`` (``asr.architecture``), or when it cannot be loaded.
    """
    from transformers import (
        AutoConfig,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    try:
        model_type = AutoConfig.from_pretrained(src).model_type
    except (OSError, ValueError) as exc:
        raise AsrError(f"{src} is not a readable model directory: {exc}") from exc
    _check_architecture(model_type)
    if model_type != architecture:
        raise AsrError(
            f"{src} holds a {model_type!r} model but asr.architecture={architecture!r}; "
            f"set asr.architecture={model_type}"
        )
    if model_type == "wav2vec2":
        model_cls, processor_cls, name = Wav2Vec2ForCTC, Wav2Vec2Processor, "wav2vec2 CTC"
    else:
        model_cls, processor_cls = WhisperForConditionalGeneration, WhisperProcessor
        name = "Whisper"
    try:
        model = model_cls.from_pretrained(src, dtype="float32")
        processor = processor_cls.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise AsrError(
            f"could not load the {name} model and processor (feature extractor + tokenizer) "
            f"from {src}: {exc}"
        ) from exc
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


# --------------------------------------------------------------------------- random model


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


# --------------------------------------------------------------------------- manifest


def _manifest(cfg: AsrConfig, out: Path, origin: dict) -> dict:
    import json

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {
        "name": cfg.name,
        "architecture": config.get("model_type"),
        "source": cfg.source,
        "seed": cfg.seed if cfg.source == "random_init" else None,
        "random_weights": bool(origin.pop("random_weights", cfg.random_weights)),
        "parameters": _count_parameters(out),
        "dims": {k: config[k] for k in _DIM_KEYS if k in config},
        "init": asdict(cfg.init) if cfg.source == "random_init" else None,
        **origin,
        "files": [
            {
                "path": p.relative_to(out).as_posix(),
                "sha256": sha256_file(p),
                "bytes": p.stat().st_size,
            }
            for p in files
        ],
    }


_DIM_KEYS = (
    "d_model",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "num_mel_bins",
    "vocab_size",
    "max_source_positions",
    "max_target_positions",
)


def _count_parameters(model_dir: Path) -> int:
    """Parameters stored in the safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total
