"""What to ask rkllm-toolkit for: the load/build/perplexity steps of a request, checked
against Rockchip's platform matrix and the model's dimensions before the toolkit starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkpipe.backends.base import QuantizeRequest
from rkpipe.backends.rkllm import protocol as P
from rkpipe.config.platforms import (
    PLATFORMS,
    algorithm_allowed,
    algorithm_problem,
    group_size,
    normalise_name,
)
from rkpipe.config.schema import QuantConfig
from rkpipe.errors import BackendError, ConfigError


@dataclass
class ConversionSpec:
    """The load and build steps for one request, after validation."""

    load: P.LoadHuggingface | P.LoadGguf
    build: P.Build
    platform: str
    dtype: str


def build_spec(request: QuantizeRequest) -> ConversionSpec:
    """Validate ``request`` and derive the toolkit's load and build steps.

    Raises:
        ConfigError: the platform matrix, the algorithm, a group size that does not divide
            the model's linear dimensions, or a missing ``extra_qparams`` file.
        BackendError: no model or calibration file where the request says.
    """
    quant = request.quant
    platform, dtype = normalise_name(request.platform), normalise_name(quant.dtype)
    algorithm = normalise_name(quant.algorithm)
    cores = check_matrix(platform, dtype, algorithm, quant.num_npu_core)
    if problem := algorithm_problem(algorithm, quant.rkllm.device):
        raise ConfigError(problem)
    load = load_step(Path(request.float_model_dir), quant)
    if isinstance(load, P.LoadHuggingface):
        check_group_size(Path(request.float_model_dir) / "config.json", dtype, platform)
    calibration = Path(request.calibration_json)
    if not calibration.is_file():
        raise BackendError(f"calibration file {calibration} not found; run the calibrate stage")
    build = P.Build(
        quantized_dtype=dtype,
        target_platform=platform,
        num_npu_core=cores,
        dataset=str(calibration.resolve()),
        optimization_level=quant.optimization_level,
        quantized_algorithm=algorithm,
        extra_qparams=extra_qparams_path(quant),
        hybrid_rate=float(quant.hybrid_rate),
        max_context=int(quant.max_context),
    )
    return ConversionSpec(load, build, platform, dtype)


def check_matrix(platform: str, dtype: str, algorithm: str, cores: int | None) -> int:
    """Re-check the platform matrix (config validation normally did); returns the core count.

    Raises ConfigError naming the value and the allowed ones.
    """
    spec = PLATFORMS.get(platform)
    if spec is None or not spec.rkllm_dtypes:
        targets = [p for p, s in PLATFORMS.items() if s.rkllm_dtypes]
        raise ConfigError(
            f"platform.name={platform!r} is not an rkllm target; allowed: {', '.join(targets)}"
        )
    if dtype not in spec.rkllm_dtypes:
        raise ConfigError(
            f"quant.dtype={dtype!r} is not supported on {platform}; "
            f"allowed: {', '.join(spec.rkllm_dtypes)}"
        )
    if not algorithm_allowed(algorithm, dtype):
        raise ConfigError(f"quant.algorithm={algorithm!r} does not apply to quant.dtype={dtype!r}")
    cores = spec.max_npu_cores if cores is None else cores
    if cores not in spec.npu_cores:
        raise ConfigError(
            f"quant.num_npu_core={cores} is not valid for {platform}; "
            f"allowed: {', '.join(map(str, spec.npu_cores))}"
        )
    return cores


def load_step(model: Path, quant: QuantConfig) -> P.LoadHuggingface | P.LoadGguf:
    """``load_huggingface`` for a directory with ``config.json``, else ``load_gguf`` for a
    ``.gguf`` file (or a directory holding exactly one). Raises BackendError otherwise."""
    if model.is_dir() and (model / "config.json").is_file():
        return P.LoadHuggingface(
            model=str(model.resolve()), device=quant.rkllm.device, dtype=quant.rkllm.load_dtype
        )
    ggufs = [model] if model.suffix == ".gguf" and model.is_file() else sorted(model.glob("*.gguf"))
    if len(ggufs) == 1:
        return P.LoadGguf(model=str(ggufs[0].resolve()))
    raise BackendError(
        f"{model}: expected a Hugging Face model directory (config.json) or one "
        f".gguf file; run the download_llm stage"
    )


def linear_dims(config: dict[str, Any]) -> dict[str, int]:
    """The input dimensions of a decoder's linear layers, from a HF ``config.json`` dict.

    ``hidden_size`` (q/k/v/gate/up/lm_head), ``intermediate_size`` (down) and
    ``num_attention_heads*head_dim`` (o_proj); a multimodal config's ``text_config`` /
    ``llm_config`` is used when present.
    """
    cfg = config.get("text_config") or config.get("llm_config") or config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_head")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    dims = {
        "hidden_size": hidden,
        "intermediate_size": _first(cfg, "intermediate_size", "n_inner", "ffn_dim"),
        "moe_intermediate_size": cfg.get("moe_intermediate_size"),
        "num_attention_heads*head_dim": heads * head_dim if heads and head_dim else None,
    }
    return {k: int(v) for k, v in dims.items() if isinstance(v, int) and v > 0}


def check_group_size(config_json: Path, dtype: str, platform: str) -> None:
    """Raise ConfigError if a group-wise ``dtype``'s group size does not divide every
    linear layer's grouped (input) dimension of the model in ``config_json``.

    Group-wise quantization splits each weight row along the reduction (input) dimension
    into blocks of the group size (as GPTQ's ``group_size``, which the toolkit maps onto the
    same dtypes); Rockchip's manual: "the group size must divide the dimension of the
    linear layer; otherwise, quantization will fail". The message names the first
    offending dimension and the dtypes of ``platform`` that would fit.
    """
    size = group_size(dtype)
    if size is None:
        return
    dims = linear_dims(json.loads(config_json.read_text(encoding="utf-8")))
    bad = [(name, value) for name, value in dims.items() if value % size]
    if not bad:
        return
    fits = [
        d
        for d in PLATFORMS[platform].rkllm_dtypes
        if group_size(d) is None or all(v % group_size(d) == 0 for v in dims.values())
    ]
    name, value = bad[0]
    raise ConfigError(
        f"quant.dtype={dtype!r} quantizes in groups of {size}, but the model's {name}={value} "
        f"is not a multiple of {size} ({config_json}); every linear layer's grouped dimension "
        f"must be; dtypes that fit on {platform}: {', '.join(fits) or 'none'}"
    )


def extra_qparams_path(quant: QuantConfig) -> str | None:
    """The ``*.qparams`` file for ``build(extra_qparams=...)``: ``quant.rkllm.extra_qparams``
    is null, a path, or ``{"path": <file>}``. Raises ConfigError for another form or a
    missing file."""
    value = quant.rkllm.extra_qparams
    if value is None:
        return None
    if isinstance(value, str):
        path = value
    elif hasattr(value, "keys") and set(value.keys()) == {"path"}:
        path = str(value["path"])
    else:
        raise ConfigError(
            "quant.rkllm.extra_qparams must be null or {path: <file.qparams>} "
            f"(a gdq/grq weight cache from a previous run), got {value!r}"
        )
    if not Path(path).is_file():
        raise ConfigError(f"quant.rkllm.extra_qparams: {path} not found")
    return str(Path(path).resolve())


def perplexity_step(
    model_dir: Path, text_file: Path, scratch: Path, seqlen: int, max_samples: int | None
) -> P.Perplexity:
    """Tokenize ``text_file`` with the float model's tokenizer into ``scratch`` and return
    the worker step. Raises BackendError if the tokenizer or text cannot be read."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        ids = tokenizer(Path(text_file).read_text(encoding="utf-8"))["input_ids"]
    except (OSError, ValueError, ImportError) as exc:
        raise BackendError(
            f"cannot tokenize {text_file} with {model_dir}'s tokenizer: {exc}"
        ) from exc
    ids_file = scratch / "ppl_token_ids.json"
    ids_file.write_text(json.dumps([int(i) for i in ids]), encoding="utf-8")
    return P.Perplexity(
        token_ids_file=str(ids_file.resolve()), seqlen=seqlen, max_samples=max_samples
    )


def _first(cfg: dict[str, Any], *keys: str) -> Any:
    return next((cfg[k] for k in keys if cfg.get(k) is not None), None)
