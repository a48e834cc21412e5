"""deploy_bench picks the LLM runner by quant.backend, and skips an .rkllm on a host without
Rockchip's runtime instead of failing; the report and compare say so instead of showing zeros.

A recording transport stands in for the board: it returns canned runner rows, so these tests
check the argv and the bookkeeping, not the runners (see tests/contract/test_rkllm_runtime.py
and tests/integration/test_rkllm_pipeline.py for those).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from rkpipe.backends.onnxruntime import RUN_WITH as ORT_RUN_WITH
from rkpipe.backends.rkllm.backend import rkllm_run_with
from rkpipe.board import deploy
from rkpipe.board.deploy import LLM_KEYS, bench_llm, deploy_and_bench, llm_runner_argv
from rkpipe.board.fingerprint import local_board_fingerprint
from rkpipe.config.schema import BenchConfig
from rkpipe.errors import ArtifactError, BoardError
from rkpipe.hostinfo import (
    FingerprintError,
    board_file,
    host_file,
    host_fingerprint,
    load_fingerprint,
    write_fingerprint,
)
from rkpipe.report import NO_BOARD, render_report
from rkpipe.report.compare import compare_runs

BENCH = BenchConfig(prompt_tokens=32, new_tokens=16, warmup=1, repetitions=2, threads=2)
TAIL = ["--prompt-tokens", "32", "--new-tokens", "16", "--warmup", "1", "--repetitions", "2",
        "--threads", "2"]  # fmt: skip


def llm_rows(ttft: float, extra: dict | None = None) -> list[dict]:
    rows = []
    for warmup, rep in ((True, 0), (False, 0), (False, 1)):
        row = {"kind": "llm", "rep": rep, "warmup": warmup, "ttft_ms": ttft, "prefill_ms": ttft,
               "prefill_tok_per_s": 32e3 / ttft, "decode_ms": 600.0, "decode_tok_per_s": 25.0,
               "peak_rss_mb": 100.0 + rep}  # fmt: skip
        rows.append(row | (extra or {}))
    return rows


RKLLM_EXTRA = {"rt_prefill_ms": 150.0, "rt_prefill_tok_per_s": 213.3, "rt_decode_tok_per_s": 40.0,
               "rt_memory_mb": 700.0, "runtime_version": "1.3.0"}  # fmt: skip
ROWS = {
    "ort_llm": llm_rows(80.0),
    "rkllm_runner": llm_rows(150.0, RKLLM_EXTRA),
    "ort_whisper": [{"kind": "asr", "rep": 0, "warmup": False, "rtf": 0.1, "encoder_ms": 5.0,
                     "decoder_ms": 7.0, "total_ms": 12.0, "peak_rss_mb": 50.0}],
}  # fmt: skip


class RecordingTransport:
    """A board that records each argv and answers with the canned rows of the engine run."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def runner_command(self, engine: str) -> list[str]:
        return ["runner", engine]

    def model_path(self, local: Path) -> str:
        return f"/board/{Path(local).name}"

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        stdout = "\n".join(json.dumps(row) for row in ROWS[argv[1]])
        return subprocess.CompletedProcess(list(argv), 0, stdout, "")

    def engines(self) -> list[str]:
        return [argv[1] for argv in self.calls]


def rkllm_dir(root: Path) -> Path:
    """What the rkllm backend leaves in models/llm/quantized."""
    quantized = root / "models" / "llm" / "quantized"
    quantized.mkdir(parents=True)
    (quantized / "model.rkllm").write_bytes(b"FAKE-RKLLM\n")
    (quantized / "rkllm_toolkit.log").write_text("INFO: Model has been saved\n")
    run_with = rkllm_run_with("rk3588", "1.3.0").as_dict()
    manifest = {"backend": "rkllm", "artifact": "model.rkllm", "run_with": run_with}
    (quantized / "quant_manifest.json").write_text(json.dumps(manifest))
    return quantized


def onnx_dir(root: Path) -> Path:
    """What the onnxruntime backend leaves in models/llm/quantized (the manifest's part)."""
    quantized = root / "quantized"
    quantized.mkdir()
    manifest = {"backend": "onnxruntime", "run_with": ORT_RUN_WITH.as_dict()}
    (quantized / "quant_manifest.json").write_text(json.dumps(manifest))
    return quantized


# ------------------------------------------------------------------ dispatch


def test_rkllm_backend_runs_rkllm_runner_with_the_board_lib(tmp_path):
    transport = RecordingTransport()
    result = bench_llm(transport, rkllm_dir(tmp_path), BENCH, 60,
                       rkllm_lib="/opt/rk/librkllmrt.so", rkllm_abi="1.3")  # fmt: skip
    assert transport.calls == [
        ["runner", "rkllm_runner", "--lib", "/opt/rk/librkllmrt.so", "--abi", "1.3", "--model",
         "/board/model.rkllm", *TAIL]
    ]  # fmt: skip
    assert {row["runtime"] for row in result.samples} == {"rkllm"}
    assert result.metrics["ttft_ms"] == 150.0 and result.metrics["decode_tok_per_s"] == 25.0
    assert result.metrics["peak_rss_mb"] == 101.0
    # the runtime's own figures ride along under their rt_ names
    assert result.metrics["rt_decode_tok_per_s"] == 40.0 and result.metrics["rt_memory_mb"] == 700


def test_onnxruntime_backend_keeps_ort_llm_and_the_same_metric_names(tmp_path):
    transport = RecordingTransport()
    ort = bench_llm(transport, onnx_dir(tmp_path), BENCH, 60)
    assert transport.calls == [["runner", "ort_llm", "--model", "/board/quantized", *TAIL]]
    assert {row["runtime"] for row in ort.samples} == {"onnxruntime"}
    rkllm = bench_llm(transport, rkllm_dir(tmp_path), BENCH, 60)
    assert "--lib" in transport.calls[-1] and "/usr/lib/librkllmrt.so" in transport.calls[-1]
    speed = {k for k in ort.metrics if k.split("_")[0] in ("ttft", "prefill", "decode", "peak")}
    assert speed <= set(rkllm.metrics)
    assert {*LLM_KEYS, "peak_rss_mb"} <= speed


def test_the_runner_comes_from_the_manifest_and_a_missing_one_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="cannot read .*quant_manifest.json.*quantize_llm"):
        llm_runner_argv(RecordingTransport(), tmp_path, BENCH)
    (tmp_path / "quant_manifest.json").write_text(json.dumps({"backend": "onnxruntime"}))
    with pytest.raises(ArtifactError, match="has no run_with .*older rkpipe.*quantize_llm"):
        llm_runner_argv(RecordingTransport(), tmp_path, BENCH)
    quantized = rkllm_dir(tmp_path)
    (quantized / "model.rkllm").unlink()
    with pytest.raises(BoardError, match="no model.rkllm in .*run the quantize_llm stage"):
        llm_runner_argv(RecordingTransport(), quantized, BENCH)
    # a third backend needs no edit here: its manifest names its runner
    third = {"runtime": "tflite", "runner": "tflite_llm", "model": ".", "host_evaluable": False}
    (tmp_path / "quant_manifest.json").write_text(json.dumps({"run_with": third}))
    assert llm_runner_argv(RecordingTransport(), tmp_path, BENCH)[:4] == [
        "runner",
        "tflite_llm",
        "--model",
        f"/board/{tmp_path.name}",
    ]


# ------------------------------------------------------------------ board=local


def local_cfg(default_cfg, root: Path, rkllm_lib: Path):
    """The default config made an rkllm w8a8/rk3588 variant on board=local, paths under root."""
    testset = root / "data" / "asr" / "testset"
    testset.mkdir(parents=True)
    (testset / "clip0.wav").write_bytes(b"RIFF")
    (testset / "clip0_white_10db.wav").write_bytes(b"RIFF")  # not benchmarked: a clean clip is
    (testset / "transcripts.jsonl").write_text(
        '{"audio": "clip0.wav", "text": "a"}\n'
        '{"audio": "clip0_white_10db.wav", "text": "a", "variant": "white_10db"}\n'
    )
    asr = root / "models" / "asr" / "quantized"
    asr.mkdir(parents=True)
    (asr / "engine.json").write_text(json.dumps({"engine": "ort_whisper"}))
    rkllm_dir(root)
    write_fingerprints(root / "data", default_cfg.board)
    return dataclasses.replace(
        default_cfg,
        paths=dataclasses.replace(
            default_cfg.paths, models_dir=str(root / "models"), data_dir=str(root / "data")
        ),
        quant=dataclasses.replace(default_cfg.quant, backend="rkllm", dtype="w8a8"),
        platform=dataclasses.replace(default_cfg.platform, name="rk3588"),
        board=dataclasses.replace(default_cfg.board, rkllm_lib=str(rkllm_lib)),
        bench=BENCH,
        # the benchmark's dispatch only: device accuracy is tests/contract/test_device_accuracy.py
        eval=dataclasses.replace(default_cfg.eval, device=False),
    )


def write_fingerprints(data_dir: Path, board, board_facts: dict | None = None) -> None:
    """What the host_fingerprint stage writes before deploy_bench runs."""
    host = write_fingerprint(host_file(data_dir), host_fingerprint(2))
    write_fingerprint(board_file(data_dir), board_facts or local_board_fingerprint(board, host, 2))


@pytest.fixture
def transport(monkeypatch) -> RecordingTransport:
    recording = RecordingTransport()
    monkeypatch.setattr(deploy, "make_transport", lambda board: recording)
    return recording


def test_local_rkllm_without_runtime_skips_llm_and_still_benches_asr(
    default_cfg, tmp_path, transport, caplog
):
    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent" / "librkllmrt.so")
    assert cfg.board.transport == "local"
    with caplog.at_level(logging.WARNING, logger="rkpipe.board.deploy"):
        result = deploy_and_bench(cfg)
    assert transport.engines() == ["ort_whisper"]
    assert result.metrics["llm_bench_skipped"] == 1.0
    assert not {"ttft_ms", "decode_tok_per_s", "peak_rss_mb"} & set(result.metrics)
    assert result.metrics["asr_rtf"] == 0.1
    assert [(s["kind"], s["runtime"]) for s in result.samples] == [("asr", "onnxruntime")]
    warning = caplog.records[-1].getMessage()
    assert "LLM benchmark skipped" in warning and str(cfg.board.rkllm_lib) in warning
    assert "board config" in warning and "point board.rkllm_lib at a librkllmrt.so" in warning


def test_local_rkllm_with_a_runtime_runs_it(default_cfg, tmp_path, transport, monkeypatch):
    lib = tmp_path / "rt" / "librkllmrt.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF")
    monkeypatch.chdir(tmp_path / "rt")
    cfg = local_cfg(default_cfg, tmp_path, Path("librkllmrt.so"))  # relative to the cwd
    result = deploy_and_bench(cfg)
    assert transport.engines() == ["rkllm_runner", "ort_whisper"]
    assert transport.calls[0][2:4] == ["--lib", str(lib)]  # made absolute for the runner
    assert "llm_bench_skipped" not in result.metrics and result.metrics["ttft_ms"] == 150.0
    assert {s["runtime"] for s in result.samples if s["kind"] == "llm"} == {"rkllm"}
    assert {s["platform"] for s in result.samples} == {"rk3588"}


def test_samples_and_result_say_where_they_were_measured(default_cfg, tmp_path, transport):
    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent.so")
    result = deploy_and_bench(cfg)
    host = load_fingerprint(host_file(tmp_path / "data"))
    assert result.provenance["host_id"] == host["id"] and result.provenance["board"] == "local"
    assert result.provenance["cpu"] == host["cpu"]["model"]
    assert result.provenance["measured_at"].startswith("20")
    assert {s["host_id"] for s in result.samples} == {host["id"]}


def test_a_board_that_answered_no_fingerprint_stops_before_anything_runs(
    default_cfg, tmp_path, transport
):
    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent.so")
    write_fingerprints(tmp_path / "data", cfg.board, {"kind": "board", "error": "no route to host"})
    with pytest.raises(
        BoardError, match="answered no fingerprint .*no route to host.*nothing was pushed"
    ):
        deploy_and_bench(cfg)
    assert transport.calls == []
    board_file(tmp_path / "data").write_text("{not json")
    with pytest.raises(FingerprintError, match="board.json cannot be read"):
        deploy_and_bench(cfg)
    assert transport.calls == []


def test_pin_frequency_on_the_host_warns_and_pins_nothing(default_cfg, tmp_path, transport, caplog):
    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent.so")
    cfg = dataclasses.replace(cfg, board=dataclasses.replace(cfg.board, pin_frequency=True))
    with caplog.at_level(logging.WARNING, logger="rkpipe.board.deploy"):
        result = deploy_and_bench(cfg)
    assert result.facts["pinned_clocks"] == 0
    assert any("no Rockchip SoC to pin" in r.getMessage() for r in caplog.records)
    assert not any("sh" == argv[0] for argv in transport.calls)  # no sysfs writes attempted


def test_benchmarks_on_one_board_take_turns(default_cfg, tmp_path, transport):
    """A second sweep worker waits for the board instead of measuring beside the first."""
    import threading

    from rkpipe.board.deploy import exclusive_board

    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent.so")
    with exclusive_board(cfg.board):  # the "other worker" is benchmarking
        worker = threading.Thread(target=deploy_and_bench, args=(cfg,))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and transport.calls == []  # waiting, nothing run yet
    worker.join(timeout=30)
    assert not worker.is_alive() and transport.engines() == ["ort_whisper"]
    other = dataclasses.replace(cfg.board, transport="ssh", host="10.0.0.7", name="evb")
    with exclusive_board(cfg.board), exclusive_board(other):  # another board: no waiting
        pass


# ------------------------------------------------------------------ report and compare


def test_report_and_compare_say_no_board_instead_of_figures(default_cfg, tmp_path):
    cfg = local_cfg(default_cfg, tmp_path, tmp_path / "absent.so")
    metrics = {"llm_bench_skipped": 1.0, "size_mb": 180.0, "asr_rtf": 0.1, "asr_wer": 1.0}
    report = render_report(cfg, metrics, "abc123")
    row = next(line for line in report.splitlines() if line.startswith("| smollm2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == ["rk3588", "w8a8"]
    assert cells[7:12] == [NO_BOARD, NO_BOARD, NO_BOARD, NO_BOARD, "180.0"]
    assert "The LLM was not benchmarked" in report and str(tmp_path / "absent.so") in report

    @dataclasses.dataclass
    class Run:
        run_id: str
        name: str
        params: dict
        metrics: dict
        tags: dict = dataclasses.field(default_factory=dict)

    params = {"model.name": "m", "platform.name": "rk3588", "quant.backend": "rkllm",
              "quant.dtype": "w8a8"}  # fmt: skip
    ort = Run(
        "a" * 32,
        "ort",
        params | {"quant.backend": "onnxruntime", "quant.dtype": "int8"},
        {"ttft_ms": 80.0, "decode_tok_per_s": 25.0, "peak_rss_mb": 512.0, "ppl": 30.0},
    )
    rkllm = Run("b" * 32, "rkllm", params, {"llm_bench_skipped": 1.0, "size_mb": 180.0})
    table = compare_runs([ort, rkllm]).to_markdown()
    line = next(x for x in table.splitlines() if x.startswith("| rkllm"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5:9] == [NO_BOARD, NO_BOARD, NO_BOARD, "180.0"]  # TTFT, tok/s, memory, size
    alone = compare_runs([rkllm]).to_markdown()  # speed columns kept, saying why they are empty
    assert "TTFT (ms)" in alone and alone.count(NO_BOARD) == 3
    assert NO_BOARD not in compare_runs([ort]).to_markdown()


def test_the_board_benchmarks_only_the_clean_clips(tmp_path):
    """Speed does not depend on noise or tempo: the harder test-set variants stay on the host."""
    from rkpipe.board.deploy import _testset_audio

    for name in ("clip_000.wav", "clip_000_pink_10db.wav", "clip_000_tempo_0.9.wav"):
        (tmp_path / name).write_bytes(b"RIFF")
    (tmp_path / "transcripts.jsonl").write_text(
        '{"audio": "clip_000.wav", "text": "a", "variant": "clean"}\n'
        '{"audio": "clip_000_pink_10db.wav", "text": "a", "variant": "pink_10db"}\n'
        '{"audio": "clip_000_tempo_0.9.wav", "text": "a", "variant": "tempo_0.9"}\n'
    )
    assert [p.name for p in _testset_audio(tmp_path)] == ["clip_000.wav"]
