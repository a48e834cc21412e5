"""The onnxruntime backend's quantization schemes (``quant.ort.scheme``): one module each.

Every module of this package defines its scheme class and registers an instance with
:func:`register`; the package imports them all when it is first imported, so adding a scheme is
one new module here plus a ``conf/quant/*.yaml`` that selects it. The config validator, the
backend's dispatch and params, and the report and ``rkpipe compare`` labels all read
:data:`SCHEMES`. The modules import nothing heavy at the top: the validator reads them before
any model is touched.
"""

from __future__ import annotations

import importlib
import pkgutil

from rkpipe.backends.ort.schemes.base import (
    EMBEDDING_BITS,
    GGUF_BLOCK_SIZE,
    Q4_1_MODES,
    OrtScheme,
    SchemeJob,
)
from rkpipe.errors import ConfigError

SCHEMES: dict[str, OrtScheme] = {}


def register(scheme: OrtScheme) -> OrtScheme:
    """Add ``scheme`` to the registry (replacing an entry of the same name)."""
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str) -> OrtScheme:
    """The registered scheme ``name``.

    Raises:
        ConfigError: not registered; names the registered schemes.
    """
    if name not in SCHEMES:
        raise ConfigError(
            f"quant.ort.scheme={name!r} is not supported; allowed: {', '.join(sorted(SCHEMES))}"
        )
    return SCHEMES[name]


def _register_builtin() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_register_builtin()

__all__ = [
    "EMBEDDING_BITS",
    "GGUF_BLOCK_SIZE",
    "Q4_1_MODES",
    "SCHEMES",
    "OrtScheme",
    "SchemeJob",
    "get_scheme",
    "register",
]
