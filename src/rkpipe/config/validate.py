"""Cross-field validation of a :class:`PipelineConfig`, run before any heavy work.

Each problem names the key, the value and the allowed values; all problems are
reported together in one line so a user fixes them in one go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from rkpipe.asr.architectures import ARCHITECTURES
from rkpipe.asr.backends import ASR_BACKENDS
from rkpipe.asr.quantizers import SCHEMES as ASR_SCHEMES
from rkpipe.asr.sources import ASR_SOURCES
from rkpipe.backends import available as available_backends
from rkpipe.backends.ort.schemes import EMBEDDING_BITS, Q4_1_MODES, SCHEMES
from rkpipe.board.transport import TRANSPORTS
from rkpipe.config.platforms import (
    ORT_DTYPES,
    PLATFORMS,
    RKLLM_DTYPES,
    RKLLM_MAX_CONTEXT,
    algorithm_allowed,
    normalise_name,
)
from rkpipe.config.schema import PipelineConfig
from rkpipe.errors import ConfigError
from rkpipe.llm.sources import SOURCES

ASR_CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
ASR_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
RKNN_PLATFORMS = ("rk3562", "rk3566", "rk3568", "rk3576", "rk3588", "rv1103", "rv1106", "rv1126b")
RKNN_DTYPES = ("w8a8", "w8a16", "w16a16i", "w16a16i_dfp", "w4a16")
CALIB_SOURCES = ("prompts", "dataset", "json")
ORT_WEIGHT_TYPES = ("QInt8", "QUInt8")
ORT_BLOCK_SIZES = (16, 32, 64, 128, 256)
ORT_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
ORT_REDUCE_RANGE = ("auto", "true", "false")


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
    _check_choice(problems, "quant.optimization_level", q.optimization_level, (0, 1))
    if not 0.0 <= q.hybrid_rate < 1.0:
        problems.append(f"quant.hybrid_rate={q.hybrid_rate} is out of range; allowed: [0, 1)")
    return problems


def _quant_problems(cfg: PipelineConfig) -> list[str]:
    q = cfg.quant
    problems: list[str] = []
    _check_choice(problems, "quant.backend", q.backend, available_backends())
    if q.max_context <= 0 or q.max_context > RKLLM_MAX_CONTEXT or q.max_context % 32:
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
    _check_choice(problems, "quant.ort.scheme", ort.scheme, sorted(SCHEMES))
    _check_choice(problems, "quant.ort.weight_type", ort.weight_type, ORT_WEIGHT_TYPES)
    _check_choice(problems, "quant.ort.activation_type", ort.activation_type, ORT_WEIGHT_TYPES)
    _check_choice(problems, "quant.ort.block_size", ort.block_size, ORT_BLOCK_SIZES)
    _check_choice(problems, "quant.ort.accuracy_level", ort.accuracy_level, ORT_ACCURACY_LEVELS)
    _check_choice(
        problems, "quant.ort.accuracy_level_8bit", ort.accuracy_level_8bit, ORT_ACCURACY_LEVELS
    )
    _check_choice(problems, "quant.ort.embedding_bits", ort.embedding_bits, EMBEDDING_BITS)
    _check_choice(problems, "quant.ort.q4_1_mode", ort.q4_1_mode, Q4_1_MODES)
    _check_choice(
        problems, "quant.ort.reduce_range", str(ort.reduce_range).lower(), ORT_REDUCE_RANGE
    )
    _check_choice(
        problems,
        "quant.ort.decode_accuracy_level",
        ort.decode_accuracy_level,
        (None, *ORT_ACCURACY_LEVELS),
    )
    allowed = SCHEMES[ort.scheme].dtypes if ort.scheme in SCHEMES else ()
    if allowed and q.dtype in ORT_DTYPES and q.dtype not in allowed:
        problems.append(
            f"quant.dtype={q.dtype!r} does not apply to quant.ort.scheme="
            f"{ort.scheme!r}; allowed: {', '.join(allowed)}"
        )
    if (
        ort.scheme in SCHEMES
        and SCHEMES[ort.scheme].gguf
        and cfg.model.source not in ("gguf", "package")
    ):
        problems.append(
            f"quant.ort.scheme={ort.scheme!r} needs a GGUF model; model.source="
            f"{cfg.model.source!r} is not allowed; allowed: gguf, package"
        )
    if ort.calib_records <= 0 or ort.calib_max_tokens <= 0:
        problems.append("quant.ort.calib_records and quant.ort.calib_max_tokens must be positive")
    return problems


def _source_problems(cfg: PipelineConfig) -> list[str]:
    problems: list[str] = []
    m, c = cfg.model, cfg.calib
    _check_choice(problems, "model.source", m.source, SOURCES.names())
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
    problems.extend(_asr_problems(cfg))
    _check_choice(problems, "calib.source", c.source, CALIB_SOURCES)
    if c.source == "json" and not c.json_file:
        problems.append("calib.json_file is required when calib.source='json'")
    if c.source == "dataset" and not c.dataset:
        problems.append("calib.dataset is required when calib.source='dataset'")
    for key in ("num_samples", "max_input_tokens", "max_new_tokens", "batch_size"):
        if getattr(c, key) <= 0:
            problems.append(f"calib.{key}={getattr(c, key)} must be a positive integer")
    return problems


def _asr_problems(cfg: PipelineConfig) -> list[str]:
    """Problems of the ``asr`` section: source, architecture, quantization scheme, rknn."""
    a, q = cfg.asr, cfg.asr.quant
    problems: list[str] = []
    _check_choice(problems, "asr.source", a.source, ASR_SOURCES.names())
    _check_choice(problems, "asr.architecture", a.architecture, ARCHITECTURES.names())
    if a.source == "hub" and not a.repo_id:
        problems.append("asr.repo_id is required when asr.source='hub'")
    _check_choice(problems, "asr.quant.scheme", q.scheme, ASR_SCHEMES)
    if q.encoder_scheme is not None:
        _check_choice(problems, "asr.quant.encoder_scheme", q.encoder_scheme, ASR_SCHEMES)
    _check_choice(problems, "asr.quant.weight_type", q.weight_type, ORT_WEIGHT_TYPES)
    _check_choice(problems, "asr.quant.activation_type", q.activation_type, ORT_WEIGHT_TYPES)
    _check_choice(problems, "asr.quant.calibrate_method", q.calibrate_method, ASR_CALIBRATE_METHODS)
    _check_choice(problems, "asr.quant.accuracy_level", q.accuracy_level, ASR_ACCURACY_LEVELS)
    if q.block_size < 16 or q.block_size & (q.block_size - 1):
        problems.append(f"asr.quant.block_size={q.block_size} must be a power of 2 >= 16")
    if q.calib_clips <= 0:
        problems.append(f"asr.quant.calib_clips={q.calib_clips} must be a positive integer")
    if not q.op_types:
        problems.append("asr.quant.op_types is empty; allowed: e.g. [MatMul] or [MatMul, Gather]")
    _check_choice(problems, "asr.backend", a.backend, ASR_BACKENDS.names())
    if a.backend == "rknn":
        _check_choice(problems, "asr.rknn.target_platform", a.rknn.target_platform, RKNN_PLATFORMS)
        _check_choice(problems, "asr.rknn.quantized_dtype", a.rknn.quantized_dtype, RKNN_DTYPES)
        level = a.rknn.optimization_level
        _check_choice(problems, "asr.rknn.optimization_level", level, (0, 1, 2, 3))
    return problems


def _run_problems(cfg: PipelineConfig) -> list[str]:
    problems: list[str] = []
    _check_choice(problems, "platform.name", cfg.platform.name, PLATFORMS)
    _check_choice(problems, "board.transport", cfg.board.transport, TRANSPORTS.names())
    if cfg.board.transport != "local" and not cfg.board.host:
        problems.append(f"board.host is required when board.transport={cfg.board.transport!r}")
    b = cfg.bench
    for key in ("prompt_tokens", "new_tokens", "repetitions", "threads"):
        if getattr(b, key) <= 0:
            problems.append(f"bench.{key}={getattr(b, key)} must be a positive integer")
    if b.warmup < 0:
        problems.append(f"bench.warmup={b.warmup} must be >= 0")
    if cfg.eval.seqlen < 16:
        problems.append(f"eval.seqlen={cfg.eval.seqlen} must be >= 16")
    return problems


def validate(cfg: PipelineConfig) -> PipelineConfig:
    """Normalise and check ``cfg``.

    Returns the normalised config (``num_npu_core`` filled with the platform's
    maximum for rkllm). Raises :class:`ConfigError` listing every problem.
    """
    cfg = normalise(cfg)
    problems = _run_problems(cfg) + _source_problems(cfg)
    if not problems:  # the quant rules index PLATFORMS by name
        problems += _quant_problems(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    if cfg.quant.backend == "rkllm" and cfg.quant.num_npu_core is None:
        cores = PLATFORMS[cfg.platform.name].max_npu_cores
        cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, num_npu_core=cores))
    return cfg
