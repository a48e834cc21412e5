"""``model.source=local``: a Hugging Face checkpoint directory on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.hub import HubContext
from rkpipe.llm.normalise import normalise_hf_dir


def acquire(cfg: ModelConfig, dest: Path, hub: HubContext) -> dict[str, Any]:
    if not cfg.path:
        raise ModelSourceError("model.source=local needs model.path (a Hugging Face directory)")
    src = Path(cfg.path)
    if not src.is_dir():
        raise ModelSourceError(
            f"local model directory not found: {src} (model.path); expected "
            "a Hugging Face checkpoint with config.json and *.safetensors"
        )
    fixes = normalise_hf_dir(src, dest, cfg)
    return {
        "source": "local",
        "path": cfg.path,
        "revision": None,
        "revision_resolved": None,
        "normalisation": fixes,
    }
