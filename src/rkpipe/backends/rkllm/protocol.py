"""The JSON protocol between :class:`RkllmBackend` and ``worker.py`` (version 1).

This module is STDLIB-ONLY and Python 3.8 compatible: the worker loads it by file path
inside rkllm-toolkit's own interpreter, where rkpipe is not installed.

Wire format
-----------
The backend writes one request document on the worker's stdin::

    {"protocol": 1, "marker": "@@rkpipe-rkllm:<token>@@",
     "steps": [{"op": "load_huggingface", "kwargs": {...}},
               {"op": "build", "kwargs": {...every build kwarg...}},
               {"op": "perplexity", "kwargs": {"token_ids_file": ..., "seqlen": 512}},
               {"op": "export", "kwargs": {"export_path": "/abs/tmp/model.rkllm"}}]}

The worker prints events on stdout, each on its own line starting with ``marker``
(anything else on stdout/stderr is the toolkit's own log)::

    <marker>{"event": "start", "toolkit_version": "1.3.0", "python": "3.10.12"}
    <marker>{"event": "step_start", "op": "build"}
    <marker>{"event": "step_end", "op": "build", "ret": 0, "seconds": 12.5, ...}
    <marker>{"event": "response", "protocol": 1, "ok": true, "steps": [...], ...}

Exactly one ``response`` event ends a run that did not crash.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union

PROTOCOL_VERSION = 1
MARKER_PREFIX = "@@rkpipe-rkllm:"

# Step operation names; "load" groups the two loaders in error messages.
OP_LOAD_HF = "load_huggingface"
OP_LOAD_GGUF = "load_gguf"
OP_BUILD = "build"
OP_EXPORT = "export"
OP_PERPLEXITY = "perplexity"
OP_IMPORT = "import"  # pseudo-step: importing rkllm.api failed
STEP_KIND = {OP_LOAD_HF: "load", OP_LOAD_GGUF: "load", OP_BUILD: "build", OP_EXPORT: "export",
             OP_PERPLEXITY: "perplexity", OP_IMPORT: "import"}  # fmt: skip


class ProtocolError(ValueError):
    """A request or event does not follow this protocol version."""


@dataclass
class LoadHuggingface:
    """``RKLLM.load_huggingface(...)`` arguments (1.2+ signature; the worker adapts)."""

    model: str
    model_lora: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    custom_config: str | None = None
    load_weight: bool = True
    op = OP_LOAD_HF


@dataclass
class LoadGguf:
    """``RKLLM.load_gguf(model)`` arguments (GGUF q4_0 / fp16)."""

    model: str
    op = OP_LOAD_GGUF


@dataclass
class Build:
    """Every ``RKLLM.build(...)`` keyword, in Rockchip's spelling (the worker adapts)."""

    quantized_dtype: str
    target_platform: str
    num_npu_core: int
    dataset: str | None
    do_quantization: bool = True
    optimization_level: int = 1
    quantized_algorithm: str = "normal"
    extra_qparams: str | None = None
    hybrid_rate: float = 0.0
    max_context: int = 4096
    op = OP_BUILD


@dataclass
class Export:
    """``RKLLM.export_rkllm(export_path)``; the path is a temporary file chosen by the backend."""

    export_path: str
    op = OP_EXPORT


@dataclass
class Perplexity:
    """Rockchip's simulated WikiText-2 PPL recipe over pre-tokenized ids (x86 ``get_logits``).

    ``token_ids_file`` holds a JSON list of ints; ``max_samples`` caps the number of
    ``seqlen`` windows (None: all).
    """

    token_ids_file: str
    seqlen: int = 512
    max_samples: int | None = None
    op = OP_PERPLEXITY


# Union, not |: this module also runs on the toolkit's Python 3.8.
Step = Union[LoadHuggingface, LoadGguf, Build, Export, Perplexity]  # noqa: UP007
STEP_TYPES = {cls.op: cls for cls in (LoadHuggingface, LoadGguf, Build, Export, Perplexity)}


@dataclass
class WorkerRequest:
    """What the worker runs, in order; it stops at the first failing step."""

    steps: list[Step]
    marker: str
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON-serialisable document sent on the worker's stdin."""
        steps = [{"op": s.op, "kwargs": asdict(s)} for s in self.steps]
        return {"protocol": self.protocol, "marker": self.marker, "steps": steps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRequest:
        """Parse a request document; raises ProtocolError on a wrong version or unknown op."""
        check_protocol(data)
        steps = []
        for raw in data.get("steps", []):
            if raw.get("op") not in STEP_TYPES:
                known = sorted(STEP_TYPES)
                raise ProtocolError(f"unknown step op {raw.get('op')!r}; known: {known}")
            steps.append(_build_dataclass(STEP_TYPES[raw["op"]], raw.get("kwargs", {})))
        return cls(steps=steps, marker=str(data["marker"]), protocol=int(data["protocol"]))


@dataclass
class StepResult:
    """The outcome of one step.

    ``ret`` is the toolkit's return code (None when the call raised); ``kwargs`` what was
    really passed after version adaptation; ``adaptations`` one sentence per change;
    ``message`` the error, if any; ``extra`` step-specific numbers (perplexity).
    """

    op: str
    ret: int | None
    seconds: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    adaptations: list[str] = field(default_factory=list)
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.ret == 0


@dataclass
class WorkerResponse:
    """The final ``response`` event: the toolkit version and every step run."""

    ok: bool
    toolkit_version: str
    python: str
    steps: list[StepResult] = field(default_factory=list)
    failed_step: str | None = None
    error: str = ""
    protocol: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (the ``response`` event body without ``event``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerResponse:
        """Parse a ``response`` event; raises ProtocolError on a wrong version."""
        check_protocol(data)
        body = {k: v for k, v in data.items() if k not in ("event", "steps")}
        response = _build_dataclass(cls, body)
        response.steps = [_build_dataclass(StepResult, s) for s in data.get("steps", [])]
        return response

    def step(self, op: str) -> StepResult | None:
        """The result of the first step named ``op``, or None."""
        return next((s for s in self.steps if s.op == op), None)


def check_protocol(data: dict[str, Any]) -> None:
    """Raise ProtocolError unless ``data["protocol"]`` is this module's version."""
    if data.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {data.get('protocol')!r}, expected {PROTOCOL_VERSION} "
            "(worker and backend come from different rkpipe versions?)"
        )


def encode_event(marker: str, event: str, body: dict[str, Any]) -> str:
    """One event line (no trailing newline): ``marker`` + compact JSON with ``event``."""
    payload = dict(body)
    payload["event"] = event
    return marker + json.dumps(payload, sort_keys=True, default=str)


def decode_event(marker: str, line: str) -> dict[str, Any] | None:
    """The event in ``line`` if it carries ``marker`` (anywhere: a toolkit's unterminated
    progress bar may precede it), else None. Raises ProtocolError on a malformed body."""
    index = line.find(marker)
    if index < 0:
        return None
    try:
        data = json.loads(line[index + len(marker) :])
    except ValueError as exc:
        raise ProtocolError(f"malformed worker event {line[:200]!r}: {exc}") from exc
    if not isinstance(data, dict) or "event" not in data:
        raise ProtocolError(f"worker event without 'event': {line[:200]!r}")
    return data


def _build_dataclass(cls: Any, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    return cls(**data)
