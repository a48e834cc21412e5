"""Registry of quantization backends, imported lazily so that listing them is cheap.

A backend is a class with a ``name`` and a ``quantize(request)`` method (see
:class:`rkpipe.backends.base.Backend`). Built-in backends are listed in
:data:`_BUILTIN` as ``"module:attr"`` and only imported by :func:`get_backend`;
others can be added at run time with the :func:`register` decorator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rkpipe.errors import ConfigError

if TYPE_CHECKING:
    from rkpipe.backends.base import Backend

# name -> "module:attr"; adding a backend is one line here.
_BUILTIN: dict[str, str] = {
    "onnxruntime": "rkpipe.backends.onnxruntime:OnnxruntimeBackend",
    "rkllm": "rkpipe.backends.rkllm:RkllmBackend",
}

# Backends registered at run time with @register (they win over _BUILTIN).
_REGISTERED: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering a backend class under ``name`` (and setting ``cls.name``).

    Returns the class unchanged otherwise. Re-registering a name replaces the entry.
    """

    def decorate(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        _REGISTERED[name] = cls
        return cls

    return decorate


def available() -> list[str]:
    """Sorted names of every backend :func:`get_backend` accepts."""
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_backend(name: str) -> Backend:
    """Return a new instance of the backend registered as ``name``.

    Raises:
        ConfigError: ``name`` is not registered (the message lists the registered names),
            or its module cannot be imported.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name not in _BUILTIN:
        raise ConfigError(
            f"quant.backend={name!r} is not a registered backend; "
            f"registered: {', '.join(available())}"
        )
    return _load(name, _BUILTIN[name])()


def _load(name: str, target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"quant.backend={name!r}: cannot import {module_name} ({exc}); "
            "install the backend's dependencies"
        ) from exc
    return getattr(module, attr)
