"""Acquire the LLM as a normalised Hugging Face checkpoint directory plus ``manifest.json``.

The source (``model.source``) is one module of :mod:`rkpipe.llm.sources`. Whatever the source,
the output directory holds ``*.safetensors``, ``config.json``, ``generation_config.json``, the
tokenizer files and a deterministic ``manifest.json`` (:mod:`rkpipe.llm.manifest`). The
directory is written atomically. Each source checks what it reads (safetensors and GGUF
structure, config.json, tokenizer files; :mod:`rkpipe.llm.integrity`) so a corrupt input is
named here, in one line. :func:`local_source_fingerprint` (re-exported from there) is the cheap
stat fingerprint a preflight stage records so DVC sees a local model edited in place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rkpipe.config.schema import ModelConfig
from rkpipe.hub import hub_from_env
from rkpipe.io import atomic_path, write_json_atomic
from rkpipe.llm.integrity import local_source_fingerprint
from rkpipe.llm.manifest import MANIFEST_NAME, build_manifest
from rkpipe.llm.sources import SOURCES

__all__ = ["acquire_llm", "local_source_fingerprint"]

log = logging.getLogger(__name__)


def acquire_llm(
    cfg: ModelConfig,
    out_dir: Path,
    *,
    token_env: str = "HF_TOKEN",
    cache_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Produce a normalised HF checkpoint for ``cfg`` in ``out_dir`` and return its manifest.

    ``out_dir`` is replaced atomically: a failed acquisition leaves the previous directory
    untouched. The hub token is read from ``os.environ[token_env]``; it is passed to
    huggingface_hub only, never logged nor written. ``cache_dir`` defaults to the HF cache
    (``HF_HUB_CACHE``/``HF_HOME``). Raises ModelSourceError for an unknown source, a missing
    package, path, file, repo or revision, a truncated or garbled model file (named, one
    line), an unreachable hub, a model that needs remote code
    while ``cfg.trust_remote_code`` is off, or too little memory for a conversion.
    """
    acquire = SOURCES.get(cfg.source)
    hub = hub_from_env(token_env, cache_dir)
    started = time.perf_counter()
    with atomic_path(Path(out_dir)) as tmp:
        tmp.mkdir(parents=True)
        provenance = acquire(cfg, tmp, hub)
        manifest = build_manifest(cfg, tmp, provenance)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
    log.info(
        "acquired %s (%s, %s parameters) into %s in %.1f s",
        cfg.name,
        cfg.source,
        f"{manifest['parameter_count']:,}",
        out_dir,
        time.perf_counter() - started,
    )
    return manifest
