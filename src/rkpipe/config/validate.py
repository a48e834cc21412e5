"""Validation of a :class:`PipelineConfig`, run before any heavy work.

First every value is checked against its field's domain (:mod:`rkpipe.config.domain`, declared
in the schema); then the rules that tie fields together (the platform matrix, a scheme's
dtypes, a source's required keys). Each problem names the key, the value and the allowed
values; all problems are reported together in one line so a user fixes them in one go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from rkpipe.asr.quantizers import config_problems as asr_quant_problems
from rkpipe.backends.ort.schemes import SCHEMES
from rkpipe.config.domain import domain_problems
from rkpipe.config.platforms import (
    ORT_DTYPES,
    PLATFORMS,
    RKLLM_DTYPES,
    RKLLM_MAX_CONTEXT,
    algorithm_allowed,
    algorithm_problem,
    normalise_name,
)
from rkpipe.config.schema import PipelineConfig
from rkpipe.errors import ConfigError


def _allowed(key: str, value: object, allowed: Iterable[object]) -> str:
    allowed = list(allowed)
    return f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}"


def _check_choice(problems: list[str], key: str, value: object, allowed: Iterable[object]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        problems.append(_allowed(key, value, allowed))


def normalise(cfg: PipelineConfig) -> PipelineConfig:
    """Return ``cfg`` with the seed's spellings (``W8A8``, ``RK3576``) lower-cased."""
    quant = dataclasses.replace(
        cfg.quant,
        dtype=normalise_name(cfg.quant.dtype),
        algorithm=normalise_name(cfg.quant.algorithm),
        backend=normalise_name(cfg.quant.backend),
    )
    platform = dataclasses.replace(cfg.platform, name=normalise_name(cfg.platform.name))
    board_platform = cfg.board.platform and normalise_name(cfg.board.platform)
    board = dataclasses.replace(cfg.board, platform=board_platform)
    return dataclasses.replace(cfg, quant=quant, platform=platform, board=board)


def _rkllm_problems(cfg: PipelineConfig) -> list[str]:
    q, platform = cfg.quant, cfg.platform.name
    spec = PLATFORMS[platform]
    if platform == "host":
        targets = [p for p in PLATFORMS if p != "host"]
        return [_allowed("platform.name", platform, targets) + " (quant.backend=rkllm needs a SoC)"]
    problems = []
    if q.dtype not in spec.rkllm_dtypes:
        problems.append(
            f"quant.dtype={q.dtype!r} is not supported on platform.name={platform!r}; "
            f"allowed: {', '.join(spec.rkllm_dtypes)}"
        )
    if q.num_npu_core is not None and q.num_npu_core not in spec.npu_cores:
        problems.append(
            f"quant.num_npu_core={q.num_npu_core} is not valid for platform.name={platform!r} "
            f"(it has {spec.max_npu_cores} NPU core(s)); allowed: "
            f"{', '.join(map(str, spec.npu_cores))}"
        )
    if not algorithm_allowed(q.algorithm, q.dtype):
        problems.append(
            f"quant.algorithm={q.algorithm!r} does not apply to quant.dtype={q.dtype!r}; "
            "allowed: normal (any dtype), grq (w4a16 dtypes only), or their _rN forms"
        )
    elif problem := algorithm_problem(q.algorithm, q.rkllm.device):
        problems.append(problem)
    return problems


def _quant_problems(cfg: PipelineConfig) -> list[str]:
    q = cfg.quant
    problems: list[str] = []
    if q.max_context % 32:
        problems.append(
            f"quant.max_context={q.max_context} is not allowed; "
            f"allowed: a multiple of 32 between 32 and {RKLLM_MAX_CONTEXT}"
        )
    if q.backend == "rkllm":
        if q.dtype not in RKLLM_DTYPES:
            problems.append(_allowed("quant.dtype", q.dtype, RKLLM_DTYPES))
        else:
            problems.extend(_rkllm_problems(cfg))
    elif q.backend == "onnxruntime":
        problems.extend(_ort_problems(cfg))
    return problems


def _ort_problems(cfg: PipelineConfig) -> list[str]:
    q, ort = cfg.quant, cfg.quant.ort
    problems: list[str] = []
    _check_choice(problems, "quant.dtype", q.dtype, ORT_DTYPES)
    allowed = SCHEMES[ort.scheme].dtypes
    if q.dtype in ORT_DTYPES and q.dtype not in allowed:
        problems.append(
            f"quant.dtype={q.dtype!r} does not apply to quant.ort.scheme="
            f"{ort.scheme!r}; allowed: {', '.join(allowed)}"
        )
    if SCHEMES[ort.scheme].gguf and cfg.model.source not in ("gguf", "package"):
        problems.append(
            f"quant.ort.scheme={ort.scheme!r} needs a GGUF model; model.source="
            f"{cfg.model.source!r} is not allowed; allowed: gguf, package"
        )
    return problems


def _source_problems(cfg: PipelineConfig) -> list[str]:
    problems: list[str] = []
    m, c = cfg.model, cfg.calib
    if m.source == "hub" and not m.repo_id:
        problems.append("model.repo_id is required when model.source='hub'")
    if m.source == "local" and not m.path:
        problems.append("model.path is required when model.source='local'")
    if m.source == "gguf" and not m.gguf_file:
        problems.append("model.gguf_file is required when model.source='gguf'")
    if m.source == "package" and not (m.package and m.gguf_file):
        problems.append(
            "model.package and model.gguf_file are required when model.source='package'"
        )
    if cfg.asr.source == "hub" and not cfg.asr.repo_id:
        problems.append("asr.repo_id is required when asr.source='hub'")
    if cfg.asr.source == "package" and not cfg.asr.package:
        problems.append("asr.package is required when asr.source='package'")
    if c.source == "json" and not c.json_file:
        problems.append("calib.json_file is required when calib.source='json'")
    if c.source == "dataset" and not c.dataset:
        problems.append("calib.dataset is required when calib.source='dataset'")
    return problems


def _run_problems(cfg: PipelineConfig) -> list[str]:
    problems: list[str] = []
    if cfg.board.transport != "local" and not cfg.board.host:
        problems.append(f"board.host is required when board.transport={cfg.board.transport!r}")
    return problems


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Normalise and check ``cfg``.

    Returns the normalised config (``num_npu_core`` filled with the platform's
    maximum for rkllm). Raises :class:`ConfigError` listing every problem.
    """
    cfg = normalise(cfg)
    problems = domain_problems(cfg)
    for name, rule in cfg.gates.rules.items():
        problems += domain_problems(rule, f"gates.rules.{name}.")
    if not problems:  # the cross-field rules index registries and PLATFORMS by value
        problems = _run_problems(cfg) + _source_problems(cfg) + _quant_problems(cfg)
        problems += asr_quant_problems(cfg.asr.quant)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    if cfg.quant.backend == "rkllm" and cfg.quant.num_npu_core is None:
        cores = PLATFORMS[cfg.platform.name].max_npu_cores
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, num_npu_core=cores))
    return cfg
