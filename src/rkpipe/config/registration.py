"""Register the typed schema and the ``rkpipe_commit`` resolver with Hydra and OmegaConf.

Kept apart from :mod:`rkpipe.config.schema` so that the schema imports nothing of rkpipe's:
the resolver pins a hub revision (:func:`rkpipe.hub.pin_revision`), and the hub reads the
schema's ``ModelConfig``.
"""

from __future__ import annotations

from rkpipe.config.schema import SCHEMA_NAME, PipelineConfig


def register_configs() -> None:
    """Register :class:`PipelineConfig` in Hydra's ConfigStore as ``rkpipe_schema``.

    ``conf/config.yaml`` lists it first in its defaults, so every composition
    (ours, DVC's Hydra mode, ``rkpipe sweep``) merges the YAML onto typed fields.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=SCHEMA_NAME, node=PipelineConfig)
    OmegaConf.register_new_resolver("rkpipe_commit", _pin_revision, replace=True)


def _pin_revision(repo_id: str, revision: str) -> str | None:
    from rkpipe.hub import pin_revision

    return pin_revision(repo_id, revision)
