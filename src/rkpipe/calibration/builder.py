"""Build rkllm-toolkit calibration records the way Rockchip's ``generate_data_quant.py`` does.

Each record's ``input`` is the prompt wrapped in the model's chat template (with the generation
prompt), and its ``target`` is what the float model answers, greedily. Targets are generated in
left-padded batches (about 10x faster than one prompt at a time on CPU); prompts are sorted by
length into batches to waste little padding, and the record order stays the input order. The
same inputs, config and model give byte-identical JSON.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from statistics import mean
from typing import Any

from rkpipe.config.schema import CalibConfig
from rkpipe.errors import CalibrationError
from rkpipe.io import sha256_file, write_text_atomic

log = logging.getLogger(__name__)


def build_records(
    model_dir: Path, inputs: list[dict], cfg: CalibConfig, max_context: int
) -> list[dict]:
    """Turn ``inputs`` (``{"input", "target"|None}``) into calibration records.

    Drops duplicate inputs (first kept), keeps at most ``cfg.num_samples``, applies the chat
    template when ``cfg.apply_chat_template`` (not for ``calib.source=json``, whose inputs are
    already final), truncates each input to ``cfg.max_input_tokens`` tokens and keeps
    input + target within ``max_context`` tokens, then generates missing targets with the float
    model in ``model_dir``. Raises CalibrationError if ``max_context`` leaves no room.
    """
    selected = select_inputs(inputs, cfg.num_samples)
    tokenizer = load_tokenizer(model_dir)
    templated = cfg.apply_chat_template and cfg.source != "json"
    prepared = [prepare_record(tokenizer, item, cfg, max_context, templated) for item in selected]
    records = [r for r in prepared if r is not None]
    if len(records) < len(prepared):
        log.warning(
            "dropped %d input(s) that do not fit in %d tokens with the chat template",
            len(prepared) - len(records),
            cfg.max_input_tokens,
        )
    _fill_targets(model_dir, tokenizer, records, cfg, max_context, templated)
    return [{"input": r["input"], "target": r["target"]} for r in records]


def _fill_targets(
    model_dir: Path,
    tokenizer: Any,
    records: list[dict],
    cfg: CalibConfig,
    max_context: int,
    templated: bool,
) -> None:
    missing = [i for i, r in enumerate(records) if r["target"] is None]
    if not missing:
        return
    prompts = [records[i]["input"] for i in missing]
    targets = generate_targets(model_dir, tokenizer, prompts, cfg, templated=templated)
    for i, target in zip(missing, targets, strict=True):
        # re-encoding decoded text can take more tokens than were generated: re-check
        room = max_context - records[i]["input_tokens"]
        records[i]["target"] = truncate_text(tokenizer, target, room)


def select_inputs(inputs: list[dict], num_samples: int) -> list[dict]:
    """Drop duplicate inputs (keeping the first) and cap the list at ``num_samples``."""
    seen: set[str] = set()
    unique = []
    for item in inputs:
        key = item["input"].strip()
        if key and key not in seen:
            seen.add(key)
            unique.append(item)
    if len(unique) < len(inputs):
        log.info("dropped %d duplicate or empty input(s)", len(inputs) - len(unique))
    if len(unique) > num_samples:
        log.info("keeping the first %d of %d inputs (calib.num_samples)", num_samples, len(unique))
    return unique[:num_samples]


def load_tokenizer(model_dir: Path) -> Any:
    """Load the checkpoint's tokenizer (fast), with a pad token for batched generation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=trusts_remote_code(model_dir)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trusts_remote_code(model_dir: Path) -> bool:
    """Whether the acquisition allowed the model's own code (``trust_remote_code`` in its
    ``manifest.json``); False without a manifest."""
    manifest = Path(model_dir) / "manifest.json"
    if not manifest.is_file():
        return False
    return bool(json.loads(manifest.read_text(encoding="utf-8")).get("trust_remote_code"))


def render(tokenizer: Any, content: str, templated: bool) -> str:
    """The text the model sees: ``content`` in the chat template, or as is."""
    if not templated:
        return content
    if not getattr(tokenizer, "chat_template", None):
        raise CalibrationError(
            "calib.apply_chat_template is true but the tokenizer has no chat "
            "template; set calib.apply_chat_template=false"
        )
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_tokens(tokenizer: Any, text: str, templated: bool) -> int:
    """Tokens of ``text`` as the model receives it (a template already holds its specials)."""
    return len(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def prepare_record(
    tokenizer: Any, item: dict, cfg: CalibConfig, max_context: int, templated: bool
) -> dict | None:
    """Render and truncate one input (and a given target) to the token budgets.

    Returns ``{"input", "target", "input_tokens"}``, or None when the template alone exceeds
    the input budget.
    """
    reserve = cfg.max_new_tokens if item.get("target") is None else 1
    budget = min(cfg.max_input_tokens, max_context - reserve)
    if budget < 1:
        raise CalibrationError(
            f"quant.max_context={max_context} leaves no room for an input "
            f"after {reserve} target tokens; raise max_context"
        )
    fitted = fit_input(tokenizer, item["input"], budget, templated)
    if fitted is None:
        return None
    text, n_input = fitted
    target = item.get("target")
    if target is not None:
        target = truncate_text(tokenizer, target, max_context - n_input)
    return {"input": text, "target": target, "input_tokens": n_input}


def fit_input(tokenizer: Any, content: str, budget: int, templated: bool) -> tuple[str, int] | None:
    """Render ``content``, cutting its tail until the rendered text is at most ``budget`` tokens.

    Returns ``(text, tokens)`` or None if even an empty content does not fit.
    """
    text = render(tokenizer, content, templated)
    n = count_tokens(tokenizer, text, templated)
    if n <= budget:
        return text, n
    ids = tokenizer.encode(content, add_special_tokens=False)
    keep = len(ids) - (n - budget)
    while keep > 0:
        text = render(tokenizer, _decode_prefix(tokenizer, ids, keep), templated)
        n = count_tokens(tokenizer, text, templated)
        if n <= budget:
            return text, n
        keep -= max(1, n - budget)
    return None


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """Cut ``text`` to at most ``max_tokens`` tokens (no special tokens added)."""
    keep = max_tokens
    while keep > 0:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= max_tokens:
            return text
        text = _decode_prefix(tokenizer, ids, keep)
        keep -= 1
    return ""


def _decode_prefix(tokenizer: Any, ids: list[int], keep: int) -> str:
    # A cut inside a multi-byte character decodes to U+FFFD: drop it.
    return tokenizer.decode(ids[:keep], skip_special_tokens=False).rstrip("\ufffd")


def generate_targets(
    model_dir: Path, tokenizer: Any, prompts: list[str], cfg: CalibConfig, *, templated: bool = True
) -> list[str]:
    """Greedy answers of the float model to ``prompts``, batched with left padding.

    ``torch.manual_seed(cfg.seed)``, ``cfg.max_new_tokens`` new tokens, batches of
    ``cfg.batch_size`` prompts of similar length; returns stripped texts in ``prompts`` order.
    """
    import torch

    from rkpipe.progress import track

    model, generation = _load_float_model(model_dir, tokenizer, cfg)
    tokenizer.padding_side = "left"
    lengths = [count_tokens(tokenizer, p, templated) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    torch.manual_seed(cfg.seed)
    targets: list[str] = [""] * len(prompts)
    started = time.perf_counter()
    for number, batch in enumerate(track(batches, "calibration targets (batches)"), 1):
        texts = _generate_batch(
            model, generation, tokenizer, [prompts[i] for i in batch], templated
        )
        for i, text in zip(batch, texts, strict=True):
            targets[i] = text
        log.info(
            "batch %d/%d: %d prompt(s), %.1f s elapsed",
            number,
            len(batches),
            len(batch),
            time.perf_counter() - started,
        )
    _warn_empty(targets)
    return targets


def _load_float_model(model_dir: Path, tokenizer: Any, cfg: CalibConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    log.info(
        "loading the float model from %s to generate %d-token targets",
        model_dir,
        cfg.max_new_tokens,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=trusts_remote_code(model_dir)
    ).eval()
    # A fresh config: pure greedy, none of the checkpoint's sampling or repetition settings.
    generation = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=model.generation_config.bos_token_id,
    )
    return model, generation


def _generate_batch(
    model: Any, generation: Any, tokenizer: Any, prompts: list[str], templated: bool
) -> list[str]:
    import torch

    encoded = tokenizer(
        prompts, return_tensors="pt", padding=True, add_special_tokens=not templated
    )
    ids = encoded["input_ids"]  # token_type_ids, which some tokenizers add, break generate()
    with torch.inference_mode():
        output = model.generate(
            input_ids=ids, attention_mask=encoded["attention_mask"], generation_config=generation
        )
    new_tokens = output[:, ids.shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    # a character cut by max_new_tokens decodes to U+FFFD at the end: drop it
    return [t.strip().rstrip("\ufffd").strip() for t in texts]


def _warn_empty(targets: list[str]) -> None:
    empty = [i for i, t in enumerate(targets) if not t]
    if empty:
        log.warning("%d generated target(s) are empty (records %s)", len(empty), empty[:10])


def calibration_json(records: list[dict]) -> str:
    """The canonical text of a calibration file (stable across runs)."""
    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def write_calibration(records: list[dict], path: Path | str) -> str:
    """Write ``records`` as deterministic UTF-8 JSON, atomically; return the file's sha256."""
    write_text_atomic(path, calibration_json(records))
    return sha256_file(path)


def summarize(records: list[dict], tokenizer: Any) -> dict[str, float | int]:
    """Metrics of the records: count and input/target token length min/mean/max."""
    metrics: dict[str, float | int] = {"calib_records": len(records)}
    for key in ("input", "target"):
        lengths = [len(tokenizer.encode(r[key], add_special_tokens=False)) for r in records]
        metrics.update(
            {
                f"calib_{key}_tokens_min": min(lengths, default=0),
                f"calib_{key}_tokens_mean": round(mean(lengths), 2) if lengths else 0.0,
                f"calib_{key}_tokens_max": max(lengths, default=0),
            }
        )
    totals = [
        len(tokenizer.encode(r["input"], add_special_tokens=False))
        + len(tokenizer.encode(r["target"], add_special_tokens=False))
        for r in records
    ]
    metrics["calib_total_tokens_max"] = max(totals, default=0)
    return metrics


def build_calibration_file(
    model_dir: Path, cfg: CalibConfig, max_context: int, out_path: Path
) -> dict[str, Any]:
    """Load the inputs of ``cfg``, build the records, write ``out_path``; return metrics + sha256.

    The stage-level convenience: :func:`~rkpipe.calibration.sources.load_inputs`, then
    :func:`build_records`, :func:`write_calibration` and :func:`summarize`.
    """
    from rkpipe.calibration.sources import load_inputs

    started = time.perf_counter()
    records = build_records(model_dir, load_inputs(cfg), cfg, max_context)
    sha = write_calibration(records, out_path)
    metrics = summarize(records, load_tokenizer(model_dir))
    metrics["calib_build_s"] = round(time.perf_counter() - started, 2)
    return {"sha256": sha, **metrics}
