"""Typed configuration: schema, platform matrix, validation, composition."""

from rkpipe.config.loader import (
    compose,
    compose_yaml,
    config_dict,
    flatten,
    load_params,
    variant_id,
)
from rkpipe.config.schema import PipelineConfig

__all__ = [
    "PipelineConfig",
    "compose",
    "compose_yaml",
    "config_dict",
    "flatten",
    "load_params",
    "variant_id",
]
