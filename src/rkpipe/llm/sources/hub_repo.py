"""``model.source=hub``: a Hugging Face hub repo, pinned to the commit its revision resolves to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.hub import HubContext, download_snapshot
from rkpipe.llm.normalise import normalise_hf_dir


def acquire(cfg: ModelConfig, dest: Path, hub: HubContext) -> dict[str, Any]:
    if not cfg.repo_id:
        raise ModelSourceError("model.source=hub needs model.repo_id (e.g. Qwen/Qwen2.5-1.5B)")
    snapshot, sha = download_snapshot(
        cfg.repo_id,
        cfg.commit or cfg.revision,
        hub,
        allow_patterns=list(cfg.allow_patterns) or None,
    )
    fixes = normalise_hf_dir(snapshot, dest, cfg)
    return {
        "source": "hub",
        "repo_id": cfg.repo_id,
        "revision": cfg.revision,
        "revision_resolved": sha,
        "endpoint": hub.public_endpoint,
        "allow_patterns": list(cfg.allow_patterns),
        "normalisation": fixes,
    }
