"""Markdown reports shaped like the seed's table, plus the accuracy columns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rkpipe.config import PipelineConfig

# The speed table follows Rockchip's benchmark.md and llama-bench: prompt / new tokens, model
# size in parameters, prefill and decode tokens/s (decode +- its stddev), memory in MB,
# threads, backend and version, where and when it was measured.
LLM_SPEED_COLUMNS = (
    "model", "params", "platform", "quant type", "backend", "pp/tg", "threads", "TTFT (ms)",
    "prefill tok/s", "decode tok/s", "memory (MB)", "size (MB)", "measured on", "date",
)  # fmt: skip
LLM_ACCURACY_COLUMNS = (
    "quant type", "run on", "PPL float", "PPL", "ΔPPL", "KLD", "top-1 agree", "gates",
    "measured on",
)  # fmt: skip
# The accuracy table's rows: the host's evaluation (evaluate) and the board's (deploy_bench,
# rkpipe.evaluate.device), with the metric prefix and the stage that measured each.
ACCURACY_ROWS = (
    ("host", "", "evaluate"),
    ("device", "device_", "deploy_bench"),
    ("device, no LoRA", "device_no_lora_", "deploy_bench"),  # an _rN variant without its adapter
)
ASR_COLUMNS = (
    "ASR model", "quant type", "size (MB)", "size ratio", "host RTF", "host RTF fp32",
    "speed-up", "board RTF", "WER", "WER fp32", "ΔWER (pt)", "CER", "clean WER host / board",
    "memory (MB)",
)  # fmt: skip
ASR_CLIP_VARIANT_COLUMNS = (
    "clip variant", "clips", "WER", "WER fp32", "ΔWER (pt)", "CER", "CER fp32",
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
    """The quant type as users name it (see :func:`rkpipe.config.labels.quant_label`)."""
    from rkpipe.config.labels import config_quant_label

    return config_quant_label(cfg)


@dataclass(frozen=True)
class ReportContext:
    """What a report says besides the figures: where each stage measured them, the verdict of
    the gates, the commit and the MLflow run."""

    provenance: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # stage -> prov
    verdict: str = "n/a"
    gate_notes: str = ""
    git_sha: str = "unknown"
    run_id: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)


MEASURING_STAGES = ("evaluate", "deploy_bench")


def measured_on(prov: Mapping[str, str] | None) -> str:
    """``Intel(R) Xeon(R) Processor [host 3fa2c1d0e9b4]``, ``rk3588-evb: Cortex-A55 + Cortex-A76
    [board 5b0c...]`` or ``–`` (not measured)."""
    if not prov:
        return "–"
    if prov.get("board_id"):
        return f"{prov.get('board')}: {prov.get('cpu', '?')} [board {prov['board_id']}]"
    return f"{prov.get('cpu', '?')} [host {prov.get('host_id', '?')}]"


def _params_m(m: Mapping[str, Any]) -> str:
    count = m.get("model_params")
    return "–" if not count else f"{count / 1e6:.0f} M"


def _decode(m: Mapping[str, Any]) -> str:
    mean, sd = m.get("decode_tok_per_s"), m.get("decode_tok_per_s_stddev")
    if mean is None:
        return "–"
    return f"{mean:.1f}" if sd is None else f"{mean:.1f} ± {sd:.1f}"


def _backend(cfg: PipelineConfig, ctx: ReportContext) -> str:
    version = ctx.versions.get(cfg.quant.backend)
    return f"{cfg.quant.backend} {version}" if version else cfg.quant.backend


def llm_speed_row(cfg: PipelineConfig, m: Mapping[str, Any], ctx: ReportContext) -> list[str]:
    """One row of the LLM speed table from the merged metrics of a variant."""
    prov = ctx.provenance.get("deploy_bench") or {}
    if llm_bench_skipped(m):
        speed = [NO_BOARD] * 4
    else:
        speed = [_fmt(m.get("ttft_ms"), 1), _fmt(m.get("prefill_tok_per_s"), 1), _decode(m),
                 _fmt(m.get("peak_rss_mb"), 0)]  # fmt: skip
    return [
        cfg.model.name, _params_m(m), cfg.platform.name, quant_label(cfg), _backend(cfg, ctx),
        f"{cfg.bench.prompt_tokens}/{cfg.bench.new_tokens}", str(cfg.bench.threads), *speed,
        _fmt(m.get("size_mb"), 1), measured_on(prov), prov.get("measured_at", "–")[:10],
    ]  # fmt: skip


def llm_accuracy_rows(
    cfg: PipelineConfig, m: Mapping[str, Any], ctx: ReportContext
) -> list[list[str]]:
    """The LLM accuracy table: the host's figures and the board's, with the gate verdict."""
    verdict = ctx.verdict.upper() if ctx.verdict in ("failed", "broken") else ctx.verdict
    verdict += f": {ctx.gate_notes}" if ctx.gate_notes else ""
    rows = []
    for where, prefix, stage in ACCURACY_ROWS:
        delta = m.get(f"{prefix}ppl_delta_pct")
        figures = [
            _fmt(m.get(f"{prefix}ppl")),
            "–" if delta is None else f"{delta:+.2f} %",
            _fmt(m.get(f"{prefix}kld_mean"), 4),
            _fmt(m.get(f"{prefix}top1_agreement"), 3),
        ]
        if prefix == "device_" and m.get("device_eval_missing"):  # reason: run tag device_eval
            figures = ["missing"] * len(figures)
        elif prefix and f"{prefix}ppl" not in m:
            continue  # not measured on a board (eval.device=false, no LoRA adapter)
        rows.append([quant_label(cfg), where, _fmt(m.get("ppl_float")), *figures, verdict,
                     measured_on(ctx.provenance.get(stage))])  # fmt: skip
    return rows


def asr_row(cfg: PipelineConfig, m: Mapping[str, Any]) -> list[str]:
    """One row of the ASR table."""
    q = cfg.asr.quant
    return [
        cfg.asr.name, f"{q.scheme} {q.weight_type} {'+'.join(q.op_types)}",
        _fmt(m.get("asr_size_mb"), 2), _fmt(m.get("asr_size_ratio"), 3),
        _fmt(m.get("asr_host_rtf"), 4), _fmt(m.get("asr_host_rtf_fp32"), 4),
        _fmt(m.get("asr_host_rtf_speedup")), _fmt(m.get("asr_rtf"), 4),
        _fmt(m.get("asr_wer"), 3), _fmt(m.get("asr_wer_fp32"), 3), _fmt(m.get("asr_wer_delta"), 2),
        _fmt(m.get("asr_cer"), 3), _clean_wer(m), _fmt(m.get("asr_peak_rss_mb"), 0),
    ]  # fmt: skip


def _clean_wer(m: Mapping[str, Any]) -> str:
    """The WER on the clean clips, on the host (evaluate) and on the board (deploy_bench): the
    board transcribes only the clean clips while it measures the RTF."""
    host = m.get("asr_wer.clean", m.get("asr_wer"))
    return f"{_fmt(host, 3)} / {_fmt(m.get('device_asr_wer'), 3)}"


def asr_clip_variants(m: Mapping[str, Any]) -> list[str]:
    """The test-set variants evaluate measured (``clean``, ``white_10db``, ...), from its
    ``asr_clips.<variant>`` figures; clean first, as the baseline the others are read against."""
    names = {k.split(".", 1)[1] for k in m if k.startswith("asr_clips.")}
    return sorted(names, key=lambda name: (name != "clean", name))


def asr_clip_variant_rows(m: Mapping[str, Any]) -> list[list[str]]:
    """One row per test-set variant: its WER/CER for the quantized and the fp32 model."""
    rows = []
    for name in asr_clip_variants(m):
        clips = m.get(f"asr_clips.{name}")
        rows.append([
            name, "–" if clips is None else str(int(clips)),
            _fmt(m.get(f"asr_wer.{name}"), 3), _fmt(m.get(f"asr_wer_fp32.{name}"), 3),
            _fmt(m.get(f"asr_wer_delta.{name}"), 2), _fmt(m.get(f"asr_cer.{name}"), 3),
            _fmt(m.get(f"asr_cer_fp32.{name}"), 3),
        ])  # fmt: skip
    return rows


def asr_random_weights(cfg: PipelineConfig, m: Mapping[str, Any]) -> bool:
    """Whether the ASR figures come from random weights: evaluate's record of the models it
    measured when present (the config may have changed since), else the config's flag."""
    recorded = m.get("asr_random_weights")
    return bool(cfg.asr.random_weights if recorded is None else recorded)


def _asr_lines(cfg: PipelineConfig, m: Mapping[str, Any]) -> list[str]:
    lines = ["## ASR", "", *_table(ASR_COLUMNS, [asr_row(cfg, m)]), ""]
    if len(asr_clip_variants(m)) > 1:
        lines += [
            "WER/CER per test-set variant (noise, tempo, voice): quantized and fp32 on the "
            "same clips.", "", *_table(ASR_CLIP_VARIANT_COLUMNS, asr_clip_variant_rows(m)), "",
        ]  # fmt: skip
    if asr_random_weights(cfg, m):
        lines += [
            "**WER/CER come from an ASR model with random weights: they are meaningless and only "
            "show the pipeline runs.** Use `asr=whisper_tiny` for real figures.",
            "",
        ]
    lines += [
        "WER/CER after Whisper's English text normaliser. Audio is synthetic speech "
        "(espeak-ng): the figures compare the quantized model with its fp32 export on the same "
        "clips, not accuracy on recorded speech.",
        "",
    ]
    return lines


def render_report(
    cfg: PipelineConfig,
    metrics: Mapping[str, Any],
    variant: str,
    ctx: ReportContext | None = None,
) -> str:
    """The variant's markdown report: LLM speed and accuracy tables, the ASR table, where and
    when each figure was measured, the gates' verdict, and the caveats that apply."""
    ctx = ctx or ReportContext()
    lines = [f"# rkpipe report: {cfg.model.name} / {cfg.asr.name} (variant {variant})", ""]
    lines += ["## LLM speed", "", *_table(LLM_SPEED_COLUMNS, [llm_speed_row(cfg, metrics, ctx)])]
    lines += [
        "",
        f"TTFT for a {cfg.bench.prompt_tokens}-token prompt, prefill tokens/s over that prompt, "
        f"decode tokens/s (mean ± stddev) over {cfg.bench.new_tokens} new tokens, "
        f"{cfg.bench.repetitions} runs after {cfg.bench.warmup} warm-ups; memory is the "
        "runner's peak RSS. Compare speed only between rows measured on the same host.",
    ]
    if llm_bench_skipped(metrics):
        lines += [
            "",
            f"The LLM was not benchmarked: an .rkllm model runs only through Rockchip's runtime "
            f"on an RK35xx NPU, and board `{cfg.board.name}` has no `{cfg.board.rkllm_lib}`. "
            "Run with a board config (e.g. `board=rk3588_ssh`) or point `board.rkllm_lib` at "
            "a runtime to measure it.",
        ]
    lines += ["", "## LLM accuracy", "",
              *_table(LLM_ACCURACY_COLUMNS, llm_accuracy_rows(cfg, metrics, ctx)), ""]  # fmt: skip
    lines += [
        f"PPL on non-overlapping {cfg.eval.seqlen}-token windows of `{cfg.eval.text_file}`; KLD "
        "and top-1 agreement against the float model. `host`: the variant run on the host "
        "named (evaluate); `device`: run on the board by its own runtime (deploy_bench), KLD "
        f"over the float model's {cfg.eval.device_topk} most likely tokens plus one bucket for "
        "the rest (a lower bound of the full KLD). Gates judge the device figures when they "
        "exist. Gates: `conf/gates` (params `gates.*`).",
    ]
    if cfg.model.float_note:
        lines += ["", f"Note: {cfg.model.float_note}."]
    lines += ["", *_asr_lines(cfg, metrics)]
    lines += _provenance_lines(ctx)
    return "\n".join(lines)


def _provenance_lines(ctx: ReportContext) -> list[str]:
    lines = ["## Provenance", ""]
    machines: dict[tuple[str, str, str], list[str]] = {}
    for stage, prov in sorted(ctx.provenance.items()):
        remote = bool(prov.get("board_id"))
        name = f"board `{prov.get('board')}` {prov['board_id']}" if remote else "host"
        key = (name if remote else f"host {prov.get('host_id', '?')}", prov.get("cpu", "?"),
               prov.get("isa") or "none")  # fmt: skip
        via = f" (driven by host {prov.get('host_id')})" if remote else ""
        machines.setdefault(key, []).append(f"`{stage}` {prov.get('measured_at', '?')}{via}")
    for (machine, cpu, isa), stages in machines.items():
        lines.append(f"- {machine}: {cpu}; kernel flags: {isa}")
        lines += [f"  - {stage}" for stage in stages]
    # the tables' figures: accuracy (evaluate) and speed (deploy_bench); the build stages'
    # timings may come from another machine's run cache without changing any artifact
    hosts = {(ctx.provenance.get(s) or {}).get("host_id") for s in MEASURING_STAGES} - {None}
    if len(hosts) > 1:
        lines.append(
            "- **The figures above come from more than one host** "
            f"({', '.join(sorted(h for h in hosts if h))}): rerun `dvc repro` on one machine."
        )
    lines.append(f"- git {ctx.git_sha}; MLflow run {ctx.run_id or '(tracking off)'}")
    return [*lines, ""]
