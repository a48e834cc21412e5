"""``quant_manifest.json``: what a quantization backend writes beside its model.

Besides its own params and facts, every backend writes ``run_with``
(:class:`RunWith`): how the model is run and measured. Deploy, evaluate and preflight read it
instead of branching on the backend's name, so "the board never imports a backend" stays true
and a third backend touches only its own package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rkpipe.errors import ArtifactError

MANIFEST_FILE = "quant_manifest.json"


@dataclass(frozen=True)
class RunWith:
    """How a quantized LLM runs: written by its backend, read by deploy and evaluate."""

    runtime: str  # what the benchmark samples are tagged with ("onnxruntime", "rkllm")
    runner: str  # the module of rkpipe.engines that benchmarks it
    model: str  # the file the runner loads, relative to the directory ("." = the directory)
    host_evaluable: bool  # the evaluate stage can score it on the host (PPL, KLD, top-1)
    needs_runtime_lib: bool = False  # the runner loads the board's runtime (board.rkllm_lib)
    platform: str | None = None  # the NPU it was built for (preflight checks the board's SoC)
    toolkit_version: str | None = None  # preflight checks the board's runtime against it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_manifest(quantized: Path) -> dict[str, Any]:
    """The manifest in ``quantized``; raises :class:`ArtifactError` when it is missing."""
    path = Path(quantized) / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path} ({exc}); run the quantize_llm stage") from None


def run_with(quantized: Path) -> RunWith:
    """How the model in ``quantized`` runs (its manifest's ``run_with``).

    Raises :class:`ArtifactError` when the manifest is missing or predates ``run_with``.
    """
    facts = read_manifest(quantized).get("run_with")
    if not isinstance(facts, dict):
        raise ArtifactError(
            f"{Path(quantized) / MANIFEST_FILE} has no run_with (written by an older rkpipe); "
            "rerun the quantize_llm stage (dvc repro -f quantize_llm)"
        )
    return RunWith(**facts)
