"""Registry of quantization backends, imported lazily so that listing them is cheap.

A backend is a class with a ``name`` and a ``quantize(request)`` method (see
:class:`rkpipe.backends.base.Backend`). Built-in backends are ``"module:attr"`` entries of
:data:`BACKENDS`, imported only by :func:`get_backend`; others are added at run time with the
:func:`register` decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rkpipe.registry import Registry

if TYPE_CHECKING:
    from rkpipe.backends.base import Backend

# Adding a backend is one line here (or @register in its own module).
BACKENDS: Registry[type] = Registry(
    "quant.backend",
    {
        "onnxruntime": "rkpipe.backends.onnxruntime:OnnxruntimeBackend",
        "rkllm": "rkpipe.backends.rkllm:RkllmBackend",
    },
)


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering a backend class under ``name`` (and setting ``cls.name``)."""
    return BACKENDS.register(name)


def available() -> list[str]:
    """Sorted names of every backend :func:`get_backend` accepts."""
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    """Return a new instance of the backend registered as ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names),
            or its module cannot be imported.
    """
    return BACKENDS.get(name)()
