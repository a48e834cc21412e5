"""Markdown reports shaped like the seed's table, plus the accuracy columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rkpipe.config import PipelineConfig

LLM_COLUMNS = (
    "model", "platform", "quant type", "board", "TTFT (ms)", "tokens/s",
    "memory (GB)", "size (MB)", "PPL float", "PPL", "ΔPPL", "KLD", "top-1 agree",
)  # fmt: skip
ASR_COLUMNS = (
    "ASR model", "quant type", "size (MB)", "size ratio", "RTF", "RTF fp32", "speed-up",
    "WER", "WER fp32", "ΔWER (pt)", "CER", "memory (GB)",
)  # fmt: skip


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# What the LLM speed cells say when deploy_bench skipped the LLM (an .rkllm on board=local
# with no runtime): no figure exists, and a zero or a dash would read as a measurement.
NO_BOARD = "n/a (no board)"


def llm_bench_skipped(metrics: Mapping[str, Any]) -> bool:
    """Whether deploy_bench recorded ``llm_bench_skipped`` instead of LLM speed figures."""
    return bool(metrics.get("llm_bench_skipped"))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [_row(list(columns)), _row(["---"] * len(columns)), *(_row(r) for r in rows)]


def quant_label(cfg: PipelineConfig) -> str:
    """The quant type as users name it (see :func:`rkpipe.report.compare.quant_label`)."""
    from rkpipe.config.loader import config_dict, flatten
    from rkpipe.report.compare import quant_label as label_of_params

    return label_of_params(flatten({"quant": config_dict(cfg)["quant"]}))


def llm_row(cfg: PipelineConfig, m: Mapping[str, Any]) -> list[str]:
    """One row of the LLM table from the merged metrics of a variant."""
    memory_gb = m.get("peak_rss_mb") and m["peak_rss_mb"] / 1024
    delta = m.get("ppl_delta_pct")
    if llm_bench_skipped(m):
        speed = [NO_BOARD] * 3
    else:
        speed = [_fmt(m.get("ttft_ms"), 1), _fmt(m.get("decode_tok_per_s"), 1), _fmt(memory_gb, 3)]
    return [
        cfg.model.name, cfg.platform.name, quant_label(cfg), cfg.board.name, *speed,
        _fmt(m.get("size_mb"), 1), _fmt(m.get("ppl_float")), _fmt(m.get("ppl")),
        "–" if delta is None else f"{delta:+.1f} %", _fmt(m.get("kld_mean"), 4),
        _fmt(m.get("top1_agreement"), 3),
    ]  # fmt: skip


def asr_row(cfg: PipelineConfig, m: Mapping[str, Any]) -> list[str]:
    """One row of the ASR table."""
    q = cfg.asr.quant
    memory_gb = m.get("asr_peak_rss_mb") and m["asr_peak_rss_mb"] / 1024
    return [
        cfg.asr.name, f"{q.scheme} {q.weight_type} {'+'.join(q.op_types)}",
        _fmt(m.get("asr_size_mb"), 2), _fmt(m.get("asr_size_ratio"), 3),
        _fmt(m.get("asr_rtf"), 4), _fmt(m.get("asr_rtf_fp32"), 4), _fmt(m.get("asr_rtf_speedup")),
        _fmt(m.get("asr_wer"), 3), _fmt(m.get("asr_wer_fp32"), 3), _fmt(m.get("asr_wer_delta"), 2),
        _fmt(m.get("asr_cer"), 3), _fmt(memory_gb, 3),
    ]  # fmt: skip


def render_report(cfg: PipelineConfig, metrics: Mapping[str, Any], variant: str) -> str:
    """The variant's markdown report: LLM table, ASR table and the caveats that apply."""
    lines = [f"# rkpipe report: {cfg.model.name} / {cfg.asr.name} (variant {variant})", ""]
    lines += ["## LLM", "", *_table(LLM_COLUMNS, [llm_row(cfg, metrics)]), ""]
    lines += [
        f"TTFT for a {cfg.bench.prompt_tokens}-token prompt, decode tokens/s over "
        f"{cfg.bench.new_tokens} new tokens, mean of {cfg.bench.repetitions} runs after "
        f"{cfg.bench.warmup} warm-ups, {cfg.bench.threads} threads; memory is the runner's "
        "peak RSS. PPL on non-overlapping "
        f"{cfg.eval.seqlen}-token windows of `{cfg.eval.text_file}`; KLD and top-1 agreement "
        "against the float model.",
    ]
    if llm_bench_skipped(metrics):
        lines += [
            "",
            f"The LLM was not benchmarked: an .rkllm model runs only through Rockchip's runtime "
            f"on an RK35xx NPU, and board `{cfg.board.name}` has no `{cfg.board.rkllm_lib}`. "
            "Run with a board config (e.g. `board=rk3588_ssh`) or point `board.rkllm_lib` at "
            "a runtime to measure it.",
        ]
    if cfg.model.float_note:
        lines += ["", f"Note: {cfg.model.float_note}."]
    lines += ["", "## ASR", "", *_table(ASR_COLUMNS, [asr_row(cfg, metrics)]), ""]
    if cfg.asr.random_weights:
        lines += [
            "**WER/CER come from a Whisper with random weights: they are meaningless and only "
            "show the pipeline runs.** Use `asr=whisper_tiny` for real figures.",
            "",
        ]
    lines += ["Audio is synthetic speech (espeak-ng): its WER is a smoke figure.", ""]
    return "\n".join(lines)
