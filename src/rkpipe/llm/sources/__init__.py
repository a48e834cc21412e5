"""Where an LLM comes from: one module per ``model.source``, registered here by name.

A source is a function ``acquire(cfg, dest, hub) -> provenance`` that fills ``dest`` with a
Hugging Face checkpoint (safetensors, config, tokenizer) and returns what the manifest records
about its origin. Config validation, :func:`rkpipe.llm.acquire.acquire_llm` and the docs ask
:data:`SOURCES`; nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkpipe.errors import ModelSourceError
from rkpipe.registry import Registry

if TYPE_CHECKING:
    from rkpipe.config.schema import ModelConfig
    from rkpipe.hub import HubContext

Source = Callable[["ModelConfig", Path, "HubContext"], dict[str, Any]]

SOURCES: Registry[Source] = Registry(
    "model.source",
    {
        "package": "rkpipe.llm.sources.package:acquire",
        "gguf": "rkpipe.llm.sources.gguf_file:acquire",
        "local": "rkpipe.llm.sources.local:acquire",
        "hub": "rkpipe.llm.sources.hub_repo:acquire",
    },
    error=ModelSourceError,
)
