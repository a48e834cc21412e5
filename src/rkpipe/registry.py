"""A named, lazily imported table of plug-ins: the one place each kind of choice is listed.

Backends, model sources and ASR architectures each keep one :class:`Registry`. Built-in
entries are ``"module:attr"`` strings, imported only when asked for, so listing the names
(what config validation does in its first second) imports nothing heavy. Entries added at run
time with :meth:`Registry.register` win over the built-ins.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rkpipe.errors import ConfigError, RkpipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of choice (``key`` is the config key users set, e.g. quant.backend)."""

    def __init__(
        self, key: str, builtin: dict[str, str], *, error: type[RkpipeError] = ConfigError
    ) -> None:
        self.key = key
        self.error = error
        self._builtin = dict(builtin)
        self._registered: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a class also gets ``cls.name = name``."""

        def decorate(obj: T) -> T:
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self._registered[name] = obj
            return obj

        return decorate

    def names(self) -> list[str]:
        """Sorted names :meth:`get` accepts."""
        return sorted(set(self._builtin) | set(self._registered))

    def get(self, name: str) -> T:
        """The entry registered as ``name``, imported on first use.

        Raises ``self.error`` naming the key, the value and the registered names, or when the
        entry's module cannot be imported (its dependencies are missing).
        """
        if name in self._registered:
            return self._registered[name]
        if name not in self._builtin:
            raise self.error(
                f"{self.key}={name!r} is not registered; registered: {', '.join(self.names())}"
            )
        return self._load(name, self._builtin[name])

    def _load(self, name: str, target: str) -> Any:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.error(
                f"{self.key}={name!r}: cannot import {module_name} ({exc}); "
                "install its dependencies"
            ) from exc
        return getattr(module, attr)
