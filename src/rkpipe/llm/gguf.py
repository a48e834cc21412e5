"""GGUF -> Hugging Face conversion, with the tokenizer aligned to the GGUF's own metadata."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rkpipe.llm.memory import estimate_conversion_memory_gb, memory_preflight

log = logging.getLogger(__name__)


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the tokenizer flags and the element count of a GGUF file (memory-mapped, fast)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    keys = (
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "general.architecture",
    )
    meta = {
        key.rsplit(".", 1)[-1]: reader.fields[key].contents()
        for key in keys
        if key in reader.fields
    }
    meta["n_elements"] = int(sum(int(t.n_elements) for t in reader.tensors))
    return meta


def convert_gguf(gguf_path: Path, dest: Path, *, trust_remote_code: bool = False) -> list[str]:
    """De-quantize ``gguf_path`` to an fp32 HF checkpoint in ``dest``; return the fixes applied.

    transformers' GGUF import gets the tokenizer wrong; it is aligned with the GGUF's own
    metadata: ``add_bos_token`` (off for SmolLM2), eos and pad token (``<|im_end|>``, id 2 for
    SmolLM2, also in config/generation_config), and the ``tokenizer.model`` that some versions
    of ``save_pretrained`` write (a byte copy of the GGUF) is deleted.
    """
    steps, started = 4, time.perf_counter()
    log.info("[1/%d] reading GGUF metadata of %s", steps, gguf_path.name)
    meta = gguf_metadata(gguf_path)
    memory_preflight(estimate_conversion_memory_gb(meta["n_elements"], "float32", "gguf"))
    log.info(
        "[2/%d] de-quantizing %s elements to float32 (~10 s for 135M)",
        steps,
        f"{meta['n_elements']:,}",
    )
    model, tokenizer = _load_gguf(gguf_path, trust_remote_code)
    log.info("[3/%d] aligning the tokenizer with the GGUF metadata", steps)
    fixes = fix_gguf_tokenizer(tokenizer, model, meta)
    log.info("[4/%d] saving safetensors and tokenizer to %s", steps, dest)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    stray = dest / "tokenizer.model"
    if stray.exists():
        stray.unlink()
        fixes.append("deleted tokenizer.model written by save_pretrained (a byte copy of the GGUF)")
    log.info(
        "GGUF converted in %.1f s; tokenizer fixes: %s",
        time.perf_counter() - started,
        "; ".join(fixes) or "none",
    )
    return fixes


def _load_gguf(gguf_path: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(
        folder, gguf_file=name, trust_remote_code=trust_remote_code
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def fix_gguf_tokenizer(tokenizer: Any, model: Any, meta: dict[str, Any]) -> list[str]:
    """Apply the GGUF's add_bos/eos/pad settings to tokenizer, config and generation config."""
    fixes: list[str] = []
    add_bos = meta.get("add_bos_token")
    if add_bos is not None and getattr(tokenizer, "add_bos_token", None) != bool(add_bos):
        fixes.append(f"add_bos_token: {tokenizer.add_bos_token} -> {bool(add_bos)} (GGUF)")
        tokenizer.add_bos_token = bool(add_bos)
    for role in ("eos", "pad"):
        key = "eos_token_id" if role == "eos" else "padding_token_id"
        token_id = meta.get(key, meta.get("eos_token_id"))
        if token_id is not None:
            fixes += _set_special(tokenizer, model, role, int(token_id))
    return fixes


def _set_special(tokenizer: Any, model: Any, role: str, token_id: int) -> list[str]:
    fixes = []
    token = tokenizer.convert_ids_to_tokens(token_id)
    before = getattr(tokenizer, f"{role}_token")
    if before != token:
        setattr(tokenizer, f"{role}_token", token)
        fixes.append(f"{role}_token: {before} -> {token} (id {token_id}, GGUF)")
    for where, obj in (("config", model.config), ("generation_config", model.generation_config)):
        if getattr(obj, f"{role}_token_id", None) != token_id:
            fixes.append(
                f"{where}.{role}_token_id: {getattr(obj, f'{role}_token_id', None)} -> {token_id}"
            )
            setattr(obj, f"{role}_token_id", token_id)
    return fixes
