"""The domain of every config field: the values it may take, declared beside the field.

Each field of the schema carries one :class:`Domain` in its dataclass metadata (see
:func:`typed`). :func:`domain_problems` walks the whole config and checks every value against
its domain, so a value outside it (``model.dtype=banana``, ``eval.threads=-1``,
``board.port=70000``) fails when ``params.yaml`` is composed or loaded, before any heavy work.
Closed sets that grow by adding a module (backends, schemes, sources, transports) name their
registry as ``"module:attr"``; it is read when a value is checked, so the schema imports no
registry. :func:`path_problems` checks that the files a stage will read exist; the preflight
stage runs it (``rkpipe params`` may compose for another machine).

A field whose value is really free (a note shown in reports, options passed to a toolkit as
they are) says so with :class:`Free` and the reason: a test walks the schema and fails on any
field without a domain.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rkpipe.secrets import redact_uri

DOMAIN_KEY = "rkpipe.domain"


@dataclass(frozen=True, kw_only=True)
class Domain(ABC):
    """What a field may hold. ``optional``: null is allowed (the field is unused then)."""

    optional: bool = False

    def problem(self, key: str, value: Any) -> str | None:
        """One line naming the key, the value and what is allowed, or None when it fits."""
        if value is None:
            return None if self.optional else f"{key} is required; allowed: {self.describe()}"
        return self._problem(key, value)

    @abstractmethod
    def _problem(self, key: str, value: Any) -> str | None:
        """The problem with a non-null ``value``, or None."""

    @abstractmethod
    def describe(self) -> str:
        """The allowed values, as a person reads them."""


def _registry_names(ref: str) -> list[Any]:
    """The names a ``"module:attr"`` registry, dict, sequence or zero-argument callable holds."""
    module, _, attr = ref.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if hasattr(obj, "names"):
        return list(obj.names())
    if callable(obj):
        return list(obj())
    return list(obj)


@dataclass(frozen=True, kw_only=True)
class OneOf(Domain):
    """A closed set: literal ``values`` and/or the names of a ``registry`` (``"module:attr"``)."""

    values: tuple[Any, ...] = ()
    registry: str | None = None
    # reduce_range is a string that YAML may give as a bool: compare the lower-cased text.
    casefold: bool = False

    def allowed(self) -> list[Any]:
        names = _registry_names(self.registry) if self.registry else []
        return [*self.values, *(n for n in names if n not in self.values)]

    def _problem(self, key: str, value: Any) -> str | None:
        probe = str(value).lower() if self.casefold else value
        if isinstance(value, bool) and not self.casefold:
            probe = repr(value)  # True == 1 would otherwise pass for (0, 1)
        if probe in self.allowed():
            return None
        return f"{key}={value!r} is not allowed; allowed: {self.describe()}"

    def describe(self) -> str:
        return ", ".join(map(str, self.allowed()))


@dataclass(frozen=True, kw_only=True)
class Number(Domain):
    """A number in a range; ``above``/``below`` are exclusive bounds, ``min``/``max`` inclusive."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    integer: bool = False

    def _problem(self, key: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key}={value!r} is not a number; allowed: {self.describe()}"
        if self.integer and not isinstance(value, int):
            return f"{key}={value!r} is not an integer; allowed: {self.describe()}"
        ok = (
            (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )
        return None if ok else f"{key}={value!r} is out of range; allowed: {self.describe()}"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = [
            f">= {_num(self.min)}" if self.min is not None else "",
            f"> {_num(self.above)}" if self.above is not None else "",
            f"<= {_num(self.max)}" if self.max is not None else "",
            f"< {_num(self.below)}" if self.below is not None else "",
        ]
        return " ".join([kind, " and ".join(b for b in bounds if b)]).strip()


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def Int(min: int | None = None, max: int | None = None, *, optional: bool = False) -> Number:  # noqa: N802
    """An integer in ``[min, max]``."""
    return Number(min=min, max=max, integer=True, optional=optional)


@dataclass(frozen=True, kw_only=True)
class Flag(Domain):
    """true or false."""

    def _problem(self, key: str, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"{key}={value!r} is not true or false"

    def describe(self) -> str:
        return "true, false"


@dataclass(frozen=True, kw_only=True)
class Text(Domain):
    """A string; non-empty unless ``empty``; matching ``pattern`` (described by ``means``)."""

    empty: bool = False
    pattern: str | None = None
    means: str = "a non-empty string"

    def _problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"{key}={value!r} is not a string; allowed: {self.describe()}"
        if not value:
            return None if self.empty else f"{key} is empty; allowed: {self.describe()}"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return f"{key}={value!r} is not allowed; allowed: {self.describe()}"
        return None

    def describe(self) -> str:
        return self.means


@dataclass(frozen=True, kw_only=True)
class Items(Domain):
    """A list whose every element fits ``of``; at least one unless ``empty``."""

    of: Domain = dataclasses.field(default_factory=Text)
    empty: bool = True

    def _problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, list | tuple):
            return f"{key}={value!r} is not a list; allowed: {self.describe()}"
        if not value and not self.empty:
            return f"{key} is empty; allowed: {self.describe()}"
        for index, item in enumerate(value):
            if problem := self.of.problem(f"{key}[{index}]", item):
                return problem
        return None

    def describe(self) -> str:
        return f"a list of {self.of.describe()}"


@dataclass(frozen=True, kw_only=True)
class LocalPath(Domain):
    """A path on this host. ``exists``: the preflight stage checks it is there, as a ``kind``
    (file or dir), when ``when`` (``("calib.source", "json")``) holds or is unset."""

    exists: bool = True
    kind: str = "file"
    when: tuple[str, Any] | None = None

    def _problem(self, key: str, value: Any) -> str | None:
        return None if isinstance(value, str) and value else f"{key}={value!r} is not a path"

    def describe(self) -> str:
        return f"the path of a {self.kind}"

    def missing(self, key: str, value: str, flat: dict[str, Any]) -> str | None:
        """One line when the path a stage will read is not there."""
        if not self.exists or (self.when and flat.get(self.when[0]) != self.when[1]):
            return None
        path = Path(value).expanduser()
        found = path.is_dir() if self.kind == "dir" else path.exists()
        return None if found else f"{key}={value!r}: no such {self.kind} ({path.resolve()})"


@dataclass(frozen=True, kw_only=True)
class Uri(Domain):
    """A URI with no credentials in it (they come from the environment, ``via``), with one of
    ``schemes`` (any, if empty), and a host and a numeric port where it names a server."""

    via: str = "the environment"
    schemes: tuple[str, ...] = ()

    def _problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return f"{key}={value!r} is not a URI"
        parts = urlsplit(value)
        if "@" in parts.netloc:  # a password, or a token as the user name
            return (
                f"{key}={redact_uri(value)} carries credentials, which would be written to "
                f"params.yaml, MLflow and logs; remove them and pass them with {self.via}"
            )
        if self.schemes and parts.scheme not in self.schemes:
            close = difflib.get_close_matches(parts.scheme, self.schemes, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}://?)" if parts.scheme and close else ""
            said = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            return f"{key}={value!r} has {said}{hint}; allowed: {self.describe()}"
        return self._server_problem(key, value) if parts.scheme in ("http", "https") else None

    @staticmethod
    def _server_problem(key: str, value: str) -> str | None:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
        except ValueError:
            return f"{key}={value!r} has a port that is not a number from 1 to 65535"
        if not parts.hostname:
            return f"{key}={value!r} names no host; e.g. http://mlflow.lan:5000"
        return None

    def describe(self) -> str:
        schemes = f" with scheme {', '.join(self.schemes)}" if self.schemes else ""
        return f"a URI{schemes}, without user:password@"


@dataclass(frozen=True, kw_only=True)
class Free(Domain):
    """Any value, on purpose; ``why`` says why it is not constrained."""

    why: str

    def _problem(self, key: str, value: Any) -> str | None:
        return None

    def describe(self) -> str:
        return f"anything ({self.why})"


def typed(default: Any, domain: Domain) -> Any:
    """A dataclass field with ``default`` (a list is copied per instance) and its ``domain``."""
    metadata = {DOMAIN_KEY: domain}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def walk(node: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every leaf field of a config dataclass instance: (dotted key, field, value)."""
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value) and DOMAIN_KEY not in field.metadata:
            yield from walk(value, key + ".")
        else:
            yield key, field, value


def domain_of(field: dataclasses.Field) -> Domain | None:
    return field.metadata.get(DOMAIN_KEY)


def domain_problems(cfg: Any, prefix: str = "") -> list[str]:
    """Every value of ``cfg`` that lies outside its field's domain, one line each."""
    problems = []
    for key, field, value in walk(cfg, prefix):
        domain = domain_of(field)
        if domain is not None and (problem := domain.problem(key, value)):
            problems.append(problem)
    return problems


def path_problems(cfg: Any) -> list[str]:
    """The files and directories a stage of ``cfg`` will read that are not there."""
    leaves = list(walk(cfg))
    flat = {key: value for key, _, value in leaves}
    problems = []
    for key, field, value in leaves:
        domain = domain_of(field)
        if isinstance(domain, LocalPath) and value is not None:
            if problem := domain.missing(key, value, flat):
                problems.append(problem)
    return problems


def undeclared_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of schema fields that carry no domain (a test keeps this list empty)."""
    missing = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if DOMAIN_KEY in field.metadata:
            continue
        nested = _nested_class(field)
        if nested is None:
            missing.append(key)
        else:
            missing.extend(undeclared_fields(nested, key + "."))
    return missing


def _nested_class(field: dataclasses.Field) -> type | None:
    """The dataclass a nested-section field holds (its default factory builds one)."""
    if field.default_factory is dataclasses.MISSING:
        return None
    made = field.default_factory()
    return type(made) if dataclasses.is_dataclass(made) else None
