"""``model.source=gguf``: a GGUF file on disk, or one file of a hub repo pinned to its sha."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.errors import ModelSourceError
from rkpipe.hub import HubContext, download_file
from rkpipe.io import sha256_file
from rkpipe.llm.gguf import check_gguf_file, convert_gguf


def acquire(cfg: ModelConfig, dest: Path, hub: HubContext) -> dict[str, Any]:
    if not cfg.gguf_file:
        raise ModelSourceError(
            "model.source=gguf needs model.gguf_file (a local path, or a file "
            "name in model.repo_id)"
        )
    if cfg.repo_id:
        gguf_path, sha = download_file(cfg.repo_id, cfg.gguf_file, cfg.revision, hub)
        info: dict[str, Any] = {
            "source": "gguf",
            "repo_id": cfg.repo_id,
            "revision": cfg.revision,
            "revision_resolved": sha,
            "endpoint": hub.public_endpoint,
        }
    else:
        gguf_path = Path(cfg.path, cfg.gguf_file) if cfg.path else Path(cfg.gguf_file)
        if not gguf_path.is_file():
            raise ModelSourceError(
                f"GGUF file not found: {gguf_path} (model.gguf_file); give an "
                "existing path, or set model.repo_id to fetch it from the hub"
            )
        info = {
            "source": "gguf",
            "path": str(gguf_path),
            "revision": None,
            "revision_resolved": None,
        }
    check_gguf_file(gguf_path, _fix_hint(cfg))
    fixes = convert_gguf(gguf_path, dest, trust_remote_code=cfg.trust_remote_code)
    return {
        **info,
        "gguf_file": gguf_path.name,
        "gguf_sha256": sha256_file(gguf_path),
        "tokenizer_fixes": fixes,
    }


def _fix_hint(cfg: ModelConfig) -> str:
    """What to do about a bad GGUF: fetch it from the hub again, or replace the local file."""
    if cfg.repo_id:
        return (
            f"delete {cfg.repo_id} from the Hugging Face cache (hf cache delete) and rerun "
            "download_llm to fetch it again"
        )
    return "re-download it, or point model.gguf_file at an intact copy"
