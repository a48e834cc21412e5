"""GGUF -> Hugging Face conversion, with the tokenizer aligned to the GGUF's own metadata.

:func:`check_gguf_file` names a truncated or garbled GGUF in one line before the ``gguf``
library or transformers meet it (they fail with ``cannot reshape array`` and the like).
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
from pathlib import Path
from typing import Any

from rkpipe.errors import ModelSourceError
from rkpipe.llm.memory import estimate_conversion_memory_gb, memory_preflight

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what the gguf package's reader (and transformers) can read
GGUF_FIX = "re-download it, or point model.gguf_file at an intact copy"
_HEADER_BYTES = 24  # magic, version, tensor count, metadata count
_DEFAULT_ALIGNMENT = 32
# Metadata value types of the GGUF spec: fixed-size scalars by struct format; 8 is a string,
# 9 an array (item type, count, items).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
# The gguf library raises these for a file it cannot parse (numpy reshape, bad enum values).
_READER_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error)


class _CutShort(Exception):
    """The GGUF header claims more bytes than the file has."""


class _Garbled(Exception):
    """A GGUF header value that no writer produces (an unknown type, an absurd count)."""


def check_gguf_file(path: Path, fix: str = GGUF_FIX) -> None:
    """Raise ModelSourceError (one line: file, problem, ``fix``) unless ``path`` is a readable
    GGUF: the magic, a supported version, and every tensor's data inside the file."""
    problem = gguf_problem(Path(path))
    if problem:
        raise ModelSourceError(f"{path}: {problem}; {fix}")


def gguf_problem(path: Path) -> str | None:
    """Describe what is wrong with the GGUF file ``path`` (None if it looks intact).

    Parses the header with the stdlib (reads the metadata and tensor table, not the weights).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    if head[:4] != GGUF_MAGIC:
        return f"starts with {head[:4]!r}, expected the GGUF magic {GGUF_MAGIC!r}: not a GGUF file"
    if size < _HEADER_BYTES:
        return f"{size} bytes, too short for a GGUF header ({_HEADER_BYTES} expected): truncated"
    version = struct.unpack_from("<I", head, 4)[0]
    if version not in GGUF_VERSIONS:
        return f"GGUF version {version}, expected one of {', '.join(map(str, GGUF_VERSIONS))}"
    try:
        with (
            open(path, "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            tensors, data_start = _GgufHeader(data).tensor_table()
    except _CutShort as exc:
        return f"{size} bytes, but the header runs past the end ({exc}): truncated or garbled"
    except _Garbled as exc:
        return f"garbled GGUF header ({exc})"
    return _tensor_extent_problem(tensors, data_start, size)


class _GgufHeader:
    """A bounds-checked cursor over a GGUF header (the spec's little-endian layout)."""

    def __init__(self, data: Any) -> None:
        self.data, self.pos = data, 8

    def take(self, count: int) -> int:
        start = self.pos
        if count < 0 or start + count > len(self.data):
            raise _CutShort(f"{count} bytes wanted at byte {start}")
        self.pos += count
        return start

    def scalar(self, fmt: str) -> Any:
        return struct.unpack_from("<" + fmt, self.data, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("Q")
        start = self.take(length)
        return bytes(self.data[start : start + length]).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise _Garbled(f"unknown metadata value type {kind} before byte {self.pos}")
        item, count = self.scalar("I"), self.scalar("Q")
        if item in _SCALARS:  # skip fixed-size items without reading them
            self.take(count * struct.calcsize(_SCALARS[item]))
        else:
            for _ in range(count):
                self.value(item)
        return None

    def tensor_table(self) -> tuple[list[tuple[str, int, int, int]], int]:
        """``([(name, ggml type, element count, offset), ...], data start)``."""
        tensor_count, kv_count = struct.unpack_from("<QQ", self.data, 8)
        self.pos, alignment = _HEADER_BYTES, _DEFAULT_ALIGNMENT
        for _ in range(kv_count):
            key, kind = self.string(), self.scalar("I")
            value = self.value(kind)
            if key == "general.alignment" and kind == 4:
                alignment = value
        if alignment <= 0 or alignment & (alignment - 1):
            raise _Garbled(f"general.alignment {alignment} is not a power of two")
        tensors = [self.tensor_info() for _ in range(tensor_count)]
        return tensors, -(-self.pos // alignment) * alignment

    def tensor_info(self) -> tuple[str, int, int, int]:
        name, n_dims = self.string(), self.scalar("I")
        if n_dims > 8:
            raise _Garbled(f"tensor {name!r} has {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= self.scalar("Q")
        return name, self.scalar("I"), elements, self.scalar("Q")


def _tensor_extent_problem(
    tensors: list[tuple[str, int, int, int]], start: int, size: int
) -> str | None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    sizes = {int(kind): block for kind, block in GGML_QUANT_SIZES.items()}
    for name, kind, elements, offset in tensors:
        if kind not in sizes:
            return f"tensor {name!r} has unknown ggml type {kind}: garbled header"
        block, block_bytes = sizes[kind]
        end = start + offset + elements // block * block_bytes
        if end > size:
            type_name = GGMLQuantizationType(kind).name
            return (
                f"{size} bytes, but tensor {name!r} ({type_name}) needs bytes up to {end}: "
                "truncated"
            )
    return None


def gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the tokenizer flags and the element count of a GGUF file (memory-mapped, fast).

    Raises ModelSourceError (one line) when the gguf library cannot parse the file.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except _READER_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(
            f"{path}: the gguf library cannot read it ({reason}); {GGUF_FIX}"
        ) from None
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

    from rkpipe.progress import step

    folder, name = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, gguf_file=name, trust_remote_code=trust_remote_code
        )
        with step(f"de-quantising {name} to float32"):
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
    except (ValueError, OSError) as exc:  # transformers re-reads the GGUF with the gguf library
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelSourceError(
            f"{gguf_path}: transformers cannot load it ({reason}); check that transformers "
            f"supports its architecture and quantization type, or {GGUF_FIX}"
        ) from exc
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
