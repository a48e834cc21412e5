"""Copy a Hugging Face checkpoint (hub snapshot or local directory) into the normalised layout."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.llm.integrity import check_safetensors_dir, read_json_object
from rkpipe.llm.memory import estimate_conversion_memory_gb, memory_preflight

log = logging.getLogger(__name__)

# Top-level files of a hub/local checkpoint that are not copied: other weight formats, READMEs
# and hidden files. Everything else (configs, tokenizer files, licences, custom code) is kept.
_SKIP_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def normalise_hf_dir(src: Path, dest: Path, cfg: ModelConfig) -> list[str]:
    """Copy an HF checkpoint from ``src`` into ``dest`` in the normalised layout.

    Keeps safetensors, configs, tokenizer files (and custom code); converts a ``.bin``-only
    checkpoint to safetensors; writes ``generation_config.json`` when missing. Returns the list
    of fixes applied. Raises ModelSourceError when config.json or the tokenizer is missing,
    config.json is not a JSON object, a safetensors file (or a shard its index lists) is
    truncated, garbled or missing, or the model needs remote code and
    ``cfg.trust_remote_code`` is off.
    """
    fix = source_fix_hint(cfg)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{src} has no config.json: not a Hugging Face checkpoint; {fix}")
    check_remote_code(read_json_object(config_path, fix), cfg)
    if not any((src / name).is_file() for name in _TOKENIZER_FILES):
        hint = "add 'tokenizer*' to model.allow_patterns" if cfg.source == "hub" else fix
        raise ModelSourceError(
            f"{src} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); {hint}"
        )
    check_safetensors_dir(src, fix)  # a truncated file is named here, not in calibrate
    _copy_top_level(src, dest)
    fixes: list[str] = []
    if not list(dest.glob("*.safetensors")):
        fixes.append(_resave_as_safetensors(src, dest, cfg))
    if not (dest / "generation_config.json").is_file():
        fixes.append(_write_generation_config(dest, cfg))
    return fixes


def source_fix_hint(cfg: ModelConfig) -> str:
    """What to do about a bad file of the checkpoint ``cfg`` names (local directory or hub)."""
    if cfg.source == "hub":
        return (
            f"delete {cfg.repo_id} from the Hugging Face cache (hf cache delete) and rerun "
            "download_llm to fetch it again"
        )
    return "re-download it, or point model.path at an intact copy"


def check_remote_code(config: dict[str, Any], cfg: ModelConfig) -> None:
    """Raise ModelSourceError if ``config`` needs custom modelling code that cfg does not allow."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING or cfg.trust_remote_code:
        return
    if not config.get("auto_map"):
        raise ModelSourceError(
            f"{cfg.repo_id or cfg.path}: config.json has model_type {model_type!r}, which this "
            "transformers version does not know and the repo ships no code for; check the "
            "checkpoint or upgrade transformers"
        )
    classes = ", ".join(sorted((config.get("auto_map") or {}).values())) or "none declared"
    raise ModelSourceError(
        f"{cfg.repo_id or cfg.path}: model_type {model_type!r} is not built into transformers "
        f"and needs the repo's own code ({classes}); review that code, then set "
        "model.trust_remote_code=true"
    )


def _copy_top_level(src: Path, dest: Path) -> None:
    for path in sorted(src.iterdir()):
        if path.name.startswith(".") or path.is_dir() or path.name.endswith(_SKIP_SUFFIXES):
            continue
        shutil.copyfile(path, dest / path.name)  # follows the cache's symlinks to the blobs


def _resave_as_safetensors(src: Path, dest: Path, cfg: ModelConfig) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    weights = sum(p.stat().st_size for p in src.glob("*.bin"))
    if not weights:
        raise ModelSourceError(
            f"{src} has neither *.safetensors nor *.bin weights; add "
            "'*.safetensors' to model.allow_patterns"
        )
    memory_preflight(estimate_conversion_memory_gb(weights // 4, "float32", "hf"))
    log.info("converting %s (*.bin) to safetensors", src)
    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=getattr(torch, cfg.dtype), trust_remote_code=cfg.trust_remote_code
    )
    model.save_pretrained(dest, safe_serialization=True)
    return "converted pytorch *.bin weights to safetensors"


def _write_generation_config(dest: Path, cfg: ModelConfig) -> str:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(dest, trust_remote_code=cfg.trust_remote_code)
    GenerationConfig.from_model_config(config).save_pretrained(dest)
    return "wrote generation_config.json from config.json (the checkpoint had none)"
