"""Compose ``conf/`` with Hydra and load ``params.yaml`` into typed, validated config.

This is the only module that touches ``DictConfig``; everything else receives a
frozen :class:`PipelineConfig`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rkpipe.config.registration import register_configs
from rkpipe.config.schema import PipelineConfig
from rkpipe.config.validate import validate
from rkpipe.errors import ConfigError

CONFIG_NAME = "config"
# Keys that say where things go, not what is built: they never change a variant's identity.
NON_VARIANT_KEYS = ("paths", "tracking", "gates")
CASE_INSENSITIVE_GROUPS = ("platform", "quant")


def _to_pipeline_config(node: Any) -> PipelineConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(PipelineConfig), node)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"invalid config value at {key}: {exc.msg}") from None
    assert isinstance(obj, PipelineConfig)
    return obj


def normalise_overrides(overrides: Sequence[str]) -> list[str]:
    """Lower-case the choice of the ``platform`` and ``quant`` groups (``platform=RK3576``).

    The seed spells platforms and dtypes in upper case; config file names are lower case.
    """
    normalised = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") in CASE_INSENSITIVE_GROUPS:
            override = f"{key}={value.lower()}"
        normalised.append(override)
    return normalised


def compose_yaml(config_dir: Path, overrides: Sequence[str] = ()) -> str:
    """Compose ``config_dir`` with Hydra overrides and return YAML as DVC's Hydra mode writes it.

    Raises :class:`ConfigError` for an unknown group option or a malformed override.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=normalise_overrides(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        message = " ".join(f"{exc}{cause}".split())
        raise ConfigError(f"cannot compose {config_dir}: {_explain(config_dir, message)}") from None
    return OmegaConf.to_yaml(cfg)


MISSING_OPTION = re.compile(r"Could not find '(?P<group>[\w/]+)/(?P<option>[^']+)'")
SWEEP_OVERRIDE = re.compile(r"Sweep parameters '(?P<override>.+)' requires --multirun")


def _explain(config_dir: Path, message: str) -> str:
    """Hydra's message with what to do: the closest option, or where sweeps go."""
    from rkpipe.config.catalog import suggest_option

    sweep = SWEEP_OVERRIDE.search(message)
    if sweep:  # Hydra says "requires --multirun", a flag rkpipe does not have
        return (f"{sweep['override']} is a sweep, and params.yaml holds one variant: run it "
                f"with `rkpipe sweep '{sweep['override']}'`, or pick one value")  # fmt: skip
    missing = MISSING_OPTION.search(message)
    if missing:
        message += suggest_option(config_dir, missing["group"], missing["option"])
    return message


def compose(config_dir: Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Compose and validate; see :func:`compose_yaml` and :func:`validate`."""
    from omegaconf import OmegaConf

    return validate(_to_pipeline_config(OmegaConf.create(compose_yaml(config_dir, overrides))))


def load_params(path: Path | str = "params.yaml") -> PipelineConfig:
    """Read ``params.yaml`` (the resolved view DVC tracks) into a validated config.

    Raises :class:`ConfigError` when the file is missing, malformed or invalid.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run `rkpipe params` to compose it from conf/")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return validate(_to_pipeline_config(node))


def config_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as plain nested dicts (JSON-safe)."""
    return asdict(cfg)


def variant_id(cfg: PipelineConfig) -> str:
    """A short, stable hash of everything that defines what is built and measured."""
    data = {k: v for k, v in config_dict(cfg).items() if k not in NON_VARIANT_KEYS}
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
