"""CTranslate2's ``model.bin``, read with the standard library and numpy.

``model.bin`` (written by ``ctranslate2/specs/model_spec.py``, read by ``src/models/model.cc``)::

    uint32 binary_version                        (1..6 understood here)
    version >= 2: string spec_name; uint32 spec_revision
    uint32 num_variables, then per variable:
        string name; uint8 rank; uint32 dims[rank]
        version >= 4: uint8 dtype_id; uint32 num_bytes   else: uint8 item_size; uint32 count
        bytes data
    version >= 3: uint32 num_aliases, then per alias: string alias; string target

A string is a uint16 length (with the trailing NUL) and the bytes. Integers are little-endian
(the writer uses native order and every platform CTranslate2 ships for is little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rkpipe.errors import AsrError

MODEL_BIN = "model.bin"
CT2_FILES = (MODEL_BIN, "config.json", "tokenizer.json")
MAX_BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SUPPORTED_REVISIONS = (3,)  # WhisperSpec.revision of CTranslate2 3.x and 4.x
GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
MULTILINGUAL_VOCAB = 51865  # English-only (.en) models have one id fewer (no <|yue|> either)
DEFAULT_FIX = "re-create the directory with ct2-transformers-converter (float16 or float32)"

# include/ctranslate2/types.h DataType order; bfloat16 is read as uint16 bit patterns.
_DTYPES = {
    0: ("float32", "<f4"),
    1: ("int8", "i1"),
    2: ("int16", "<i2"),
    3: ("int32", "<i4"),
    4: ("float16", "<f2"),
    5: ("bfloat16", "<u2"),
}
# binary versions < 4 store an item size instead of a type id (model.cc)
_ITEM_SIZES = {4: ("float32", "<f4"), 2: ("int16", "<i2"), 1: ("int8", "i1")}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class Ct2Model:
    """The variables of one ``model.bin``; ``aliases`` maps an alias to the stored name."""

    path: Path
    binary_version: int
    spec_name: str | None
    spec_revision: int
    variables: dict[str, np.ndarray]
    dtypes: dict[str, str]
    aliases: dict[str, str]

    def resolve(self, name: str) -> str:
        """The stored name behind ``name`` (alias chains followed); KeyError if unknown."""
        seen = set()
        while name not in self.variables:
            if name in seen or name not in self.aliases:
                raise KeyError(name)
            seen.add(name)
            name = self.aliases[name]
        return name

    def has(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def names(self) -> list[str]:
        return sorted(set(self.variables) | set(self.aliases))

    def float32(self, name: str) -> np.ndarray:
        """Variable ``name`` widened to float32 (exact for float16 and bfloat16)."""
        real = self.resolve(name)
        value, dtype = self.variables[real], self.dtypes[real]
        if dtype == "bfloat16":
            return (value.astype(np.uint32) << 16).view(np.float32)
        return value.astype(np.float32)

    def scalar(self, name: str, default: int | None = None) -> int:
        if not self.has(name):
            if default is None:
                raise bad_input(self.path, f"spec attribute {name!r} is missing")
            return default
        return int(self.variables[self.resolve(name)].item())


def bad_input(path: Path, problem: str, fix: str = DEFAULT_FIX) -> AsrError:
    return AsrError(f"{path}: {problem}; {fix}")


# --------------------------------------------------------------------------- reader


class _Cursor:
    """Reads little-endian fields from the file's bytes; a short read is a truncated file."""

    def __init__(self, data: bytes, path: Path, fix: str) -> None:
        self.buf, self.pos, self.path, self.fix = memoryview(data), 0, path, fix

    def take(self, size: int, what: str) -> memoryview:
        if self.pos + size > len(self.buf):
            raise bad_input(
                self.path,
                f"truncated CTranslate2 model file: {what} needs {size} bytes at offset "
                f"{self.pos}, the file has {len(self.buf)} bytes",
                self.fix,
            )
        self.pos += size
        return self.buf[self.pos - size : self.pos]

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.unpack("<H", what)[0], what))
        if not raw or raw[-1] != 0:
            raise bad_input(
                self.path, f"{what} is not a NUL-terminated string (corrupt file)", self.fix
            )
        return raw[:-1].decode("utf-8", errors="replace")


def read_model_bin(path: Path, fix: str = DEFAULT_FIX) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1..6) into numpy arrays.

    Raises :class:`AsrError` (one line naming the file, ending with ``fix``) for a missing,
    truncated or corrupt file, an unknown binary version, dtype or payload size, or an alias to
    nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_input(path, "not found (a CTranslate2 model directory holds model.bin)", fix)
    cur = _Cursor(path.read_bytes(), path, fix)
    version = cur.u32("the binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise bad_input(
            path,
            f"unknown CTranslate2 binary version {version}, expected 1..{MAX_BINARY_VERSION} "
            "(not a CTranslate2 model.bin, or one newer than this reader)",
            fix,
        )
    spec, revision = None, 1  # version 1 has no spec header
    if version >= 2:
        spec, revision = cur.string("the spec name"), cur.u32("the spec revision")
    variables, dtypes = _read_variables(cur, version)
    aliases = _read_aliases(cur, variables) if version >= 3 else {}
    if cur.pos != len(cur.buf):
        raise bad_input(
            path, f"{len(cur.buf) - cur.pos} unexpected bytes after the last table", fix
        )
    return Ct2Model(path, version, spec, revision, variables, dtypes, aliases)


def _read_variables(cur: _Cursor, version: int) -> tuple[dict, dict]:
    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for index in range(cur.u32("the variable count")):
        name = cur.string(f"the name of variable #{index}")
        rank = cur.unpack("<B", f"the rank of {name}")[0]
        shape = cur.unpack(f"<{rank}I", f"the shape of {name}")
        dtype, npdtype, size = _read_dtype(cur, version, name)
        count = int(np.prod(shape, dtype=np.int64))
        if count * npdtype.itemsize != size:
            raise bad_input(
                cur.path,
                f"variable {name!r}: shape {shape} of {dtype} needs {count * npdtype.itemsize} "
                f"bytes, the header says {size}",
                cur.fix,
            )
        if name in variables:
            raise bad_input(cur.path, f"variable {name!r} is stored twice", cur.fix)
        data = cur.take(size, f"the data of {name}")
        variables[name] = np.frombuffer(data, dtype=npdtype).reshape(shape)
        dtypes[name] = dtype
    return variables, dtypes


def _read_dtype(cur: _Cursor, version: int, name: str) -> tuple[str, np.dtype, int]:
    """(CT2 dtype name, numpy dtype, payload bytes) of the variable whose header follows."""
    if version >= 4:
        key, table, what = cur.unpack("<B", f"the dtype of {name}")[0], _DTYPES, "dtype id"
    else:
        key, table, what = cur.unpack("<B", f"the item size of {name}")[0], _ITEM_SIZES, "size"
    if key not in table:
        raise bad_input(cur.path, f"variable {name!r} has an unknown {what} {key}", cur.fix)
    dtype, code = table[key]
    size = cur.u32(f"the size of {name}")
    npdtype = np.dtype(code)
    return dtype, npdtype, size if version >= 4 else size * npdtype.itemsize


def _read_aliases(cur: _Cursor, variables: dict) -> dict[str, str]:
    aliases = {}
    for index in range(cur.u32("the alias count")):
        alias = cur.string(f"alias #{index}")
        aliases[alias] = cur.string(f"the target of alias {alias}")
    model = Ct2Model(cur.path, 0, None, 0, variables, {}, aliases)
    for alias, target in aliases.items():
        try:
            model.resolve(alias)
        except KeyError:
            raise bad_input(
                cur.path, f"alias {alias!r} points to unknown {target!r}", cur.fix
            ) from None
    return aliases
