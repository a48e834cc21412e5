"""The whole pipeline for an rkllm variant (w8a8 on rk3588) under real DVC and MLflow, in a
temporary copy of the repository: the recording fake of rkllm-toolkit converts the model in
its own interpreter (``quant.rkllm.python``), and deploy_bench on ``board=local`` runs
``rkllm_runner`` against the fake ``librkllmrt.so`` the contract tests build
(``board.rkllm_lib``), whose prefill and per-token times are injected. Then the same variant
without a runtime on the host: only deploy_bench, report and record rerun, the LLM benchmark
is skipped and the report says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from board_fixture import load_fake_runtime_builder
from test_sweep_pipeline import copy_repo, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FAKE_TOOLKIT = REPO / "tests" / "contract" / "fake_rkllm"
VARIANT = ("experiment=smoke", "quant=w8a8", "platform=rk3588")
PREFILL_MS, DECODE_MS_PER_TOKEN = 120.0, 25.0
STAGES = ("download_llm", "calibrate", "export_llm", "quantize_llm", "evaluate", "deploy_bench",
          "report", "record")  # fmt: skip


def fake_toolkit_python(directory: Path, record: Path) -> Path:
    """An interpreter "with rkllm-toolkit installed", as quant.rkllm.python expects one: this
    venv's python with the recording fake of ``rkllm.api`` (and nothing else) on its path."""
    python = directory / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={shlex.quote(str(FAKE_TOOLKIT))}\n"
        f"export FAKE_RKLLM_RECORD={shlex.quote(str(record))}\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    return python


BIGRAM_ROWS, VOCAB = 8, 49152  # SmolLM2's vocabulary: the reference's logits have its width


def write_bigram(path: Path) -> Path:
    """The fake runtime's logits table (int32 rows, int32 vocab, float32 rows x vocab)."""
    table = np.random.default_rng(7).normal(0, 3, (BIGRAM_ROWS, VOCAB)).astype(np.float32)
    path.write_bytes(np.array([BIGRAM_ROWS, VOCAB], np.int32).tobytes() + table.tobytes())
    return path


def read_bigram(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes()[8:], np.float32).reshape(BIGRAM_ROWS, VOCAB)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def params(repo: Path, env: dict, *overrides: str) -> None:
    run([sys.executable, "-m", "rkpipe.cli", "params", *VARIANT, *overrides], repo, env)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The repo copy after ``dvc repro`` of the rkllm variant, with its environment and fakes."""
    root = tmp_path_factory.mktemp("rkllm_pipeline")
    repo, calls = root / "repo", root / "toolkit_calls.jsonl"
    repo.mkdir()
    lib = load_fake_runtime_builder().build_fake_runtime(root / "runtime", "1.3")
    bigram = write_bigram(root / "bigram.bin")
    python = fake_toolkit_python(root / "rkllm-venv", calls)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "RKPIPE_", "FAKE_"))
    }
    env |= {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),  # the copy's code, as the commit records it
        "PYTHONHASHSEED": "0",
        "FAKE_PREFILL_MS": str(PREFILL_MS),
        "FAKE_DECODE_MS_PER_TOKEN": str(DECODE_MS_PER_TOKEN),
        "FAKE_BIGRAM": str(bigram),  # the fake's logits mode: device accuracy
    }
    copy_repo(repo, env)
    params(repo, env, f"quant.rkllm.python={python}", f"board.rkllm_lib={lib}")
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "rkllm"], repo, env)
    out = run(["dvc", "repro"], repo, env, timeout=2400)
    return {"repo": repo, "env": env, "lib": lib, "python": python, "calls": calls,
            "repro": out.stdout, "bigram": bigram}  # fmt: skip


def store(repo: Path):
    from rkpipe.tracking.store import Store

    return Store(root=repo)


def test_fake_toolkit_converted_the_model_in_its_own_interpreter(pipeline):
    repo = pipeline["repo"]
    assert set(STAGES) <= stages_run(pipeline["repro"])
    model = repo / "models/llm/quantized/model.rkllm"
    assert model.read_bytes().startswith(b"FAKE-RKLLM\n")
    calls = [json.loads(line) for line in pipeline["calls"].read_text().splitlines()]
    assert [c["method"] for c in calls] == ["load_huggingface", "build", "export_rkllm"]
    build = calls[1]["args"]
    assert (build["quantized_dtype"], build["target_platform"]) == ("w8a8", "rk3588")
    assert (build["num_npu_core"], build["max_context"]) == (3, 4096)
    assert build["dataset"] == str((repo / "data/calib/calibration.json").resolve())
    manifest = read_json(repo / "models/llm/quantized/quant_manifest.json")
    assert manifest["toolkit_version"] == "1.3.0" and manifest["platform"] == "rk3588"
    assert str(pipeline["python"]) not in json.dumps(manifest)  # a host path: in the params


def test_bench_carries_the_fake_runtime_timings(pipeline):
    repo = pipeline["repo"]
    bench = read_json(repo / "metrics/bench.json")
    assert "llm_bench_skipped" not in bench
    assert bench["ttft_ms"] == pytest.approx(PREFILL_MS, rel=0.05)
    assert bench["decode_tok_per_s"] == pytest.approx(1e3 / DECODE_MS_PER_TOKEN, rel=0.05)
    # the runtime's own figures are details: in metrics/details/, not in dvc metrics show
    details = read_json(repo / "metrics/details/bench.json")
    assert details["rt_prefill_ms"] == pytest.approx(PREFILL_MS, rel=0.05)
    assert "rt_prefill_ms" not in bench
    assert bench["peak_rss_mb"] > 0 and bench["asr_rtf"] > 0
    samples = read_json(repo / "reports/bench_llm_samples.json")
    assert len(samples) == 2  # experiment=smoke: the 2 measured repetitions (no warm-up)
    assert not any(s["warmup"] for s in samples)
    assert {(s["runtime"], s["runtime_version"], s["abi"]) for s in samples} == {
        ("rkllm", "1.3.0", "1.3")
    }
    assert {(s["board"], s["platform"], s["prompt_tokens"]) for s in samples} == {
        ("local", "rk3588", 32)
    }
    asr = read_json(repo / "reports/bench_asr_samples.json")
    assert asr and {s["runtime"] for s in asr} == {"onnxruntime"}
    report = (repo / "reports/report.md").read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| smollm2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [cells[0], *cells[2:4]] == ["smollm2-135m-instruct", "rk3588", "w8a8"]
    assert float(cells[7]) == pytest.approx(PREFILL_MS, rel=0.05)  # TTFT (ms)
    recorded = read_json(repo / "reports/outputs.sha256.json")
    assert "models/llm/quantized/model.rkllm" in json.dumps(recorded)


def test_mlflow_run_has_the_structure_of_an_ort_run(pipeline):
    repo = pipeline["repo"]
    s = store(repo)
    runs = s.search([s.experiment_id("rkpipe")], "")
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.status == "FINISHED" and "smollm2-135m-instruct|w8a8|rk3588|" in run_.name
    assert (run_.tags["backend"], run_.tags["dtype"], run_.tags["platform"]) == (
        "rkllm", "w8a8", "rk3588"
    )  # fmt: skip
    assert all(run_.tags[f"rkpipe.stage.{stage}"] == "finished" for stage in STAGES)
    assert len(run_.tags["git.sha"]) == 40
    # params: the resolved config, plus what the toolkit was and was asked to do
    assert run_.params["quant.backend"] == "rkllm"
    assert run_.params["board.rkllm_lib"] == str(pipeline["lib"])
    assert run_.params["rkllm.toolkit_version"] == "1.3.0"
    build_call = json.loads(run_.params["rkllm.build_call"])
    assert build_call["quantized_dtype"] == "w8a8" and build_call["target_platform"] == "rk3588"
    # metrics: an ORT run's speed, size and ASR figures under the same names (host PPL/KLD
    # have no .rkllm runtime on the host), plus the toolkit's step times
    bench = read_json(repo / "metrics/bench.json")
    assert {"ttft_ms", "decode_tok_per_s", "peak_rss_mb", "size_mb", "asr_wer", "asr_rtf",
            "quantize_s", "rkllm_build_s"} <= set(run_.metrics)  # fmt: skip
    assert run_.metrics["ttft_ms"] == pytest.approx(bench["ttft_ms"])
    artifacts = {a.path for a in s.client.list_artifacts(run_.run_id)}
    expected = {"config", "dvc", "report", "bench", "calibration", "manifests", "logs"}
    assert expected <= artifacts, artifacts
    log = s.read_artifact(run_.run_id, "logs/rkllm_toolkit.log")
    assert log and "Model has been saved" in log
    manifest = json.loads(
        s.read_artifact(run_.run_id, "manifests/quantize_llm/quant_manifest.json")
    )
    assert manifest["build_call"] == build_call
    assert s.read_artifact(run_.run_id, "outputs/sha256.json")


def test_device_accuracy_comes_from_the_runtimes_logits(pipeline):
    """deploy_bench scored the .rkllm on the "board" in logits mode: its PPL and top-1 equal
    what this test computes from the fake's bigram table and the stored reference (1e-6)."""
    repo = pipeline["repo"]
    table = read_bigram(pipeline["bigram"]).astype(np.float64)
    with np.load(repo / "data/eval/reference_logits.npz") as ref:
        ids, lengths, top1 = ref["ids"], ref["window_lengths"], ref["top1"]
    nll, agree = [], []
    for window in np.split(ids, np.cumsum(lengths)[:-1]):
        logits = table[window[:-1] % BIGRAM_ROWS]
        logq = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        nll.append(-logq[np.arange(len(window) - 1), window[1:]])
        agree.append(logits.argmax(axis=-1))
    details = read_json(repo / "metrics/details/bench.json")
    assert details["device_eval_missing"] == 0.0
    assert details["device_ppl"] == pytest.approx(np.exp(np.concatenate(nll).mean()), rel=1e-6)
    expected_top1 = float((np.concatenate(agree) == top1).mean())
    assert details["device_top1_agreement"] == pytest.approx(expected_top1, rel=1e-6)
    assert details["device_kld_mean"] > 0
    report = (repo / "reports/report.md").read_text(encoding="utf-8")
    host_row = next(line for line in report.splitlines() if "| host |" in line)
    device_row = next(line for line in report.splitlines() if "| device |" in line)
    assert "| – | – | – | – |" in host_row  # an .rkllm has no host runtime: no host figures
    assert f"{details['device_ppl']:.2f}" in device_row


def test_without_a_runtime_on_the_host_only_the_llm_bench_is_skipped(pipeline, tmp_path):
    """Last: it changes the workspace. board.rkllm_lib is a board param, so only
    deploy_bench and what follows rerun; the conversion is not redone."""
    repo, env = pipeline["repo"], pipeline["env"]
    missing = tmp_path / "no-npu-here" / "librkllmrt.so"
    params(repo, env, f"quant.rkllm.python={pipeline['python']}", f"board.rkllm_lib={missing}")
    out = run(["dvc", "repro"], repo, env, timeout=1200)
    # preflight and host_fingerprint always run; board.rkllm_lib leaves the board's fingerprint
    # unchanged
    assert stages_run(out.stdout) == {
        "preflight", "host_fingerprint", "deploy_bench", "report", "record",
    }  # fmt: skip
    said = " ".join((out.stdout + out.stderr).split())  # the log handler wraps long lines
    assert "LLM benchmark skipped" in said and "board.rkllm_lib" in said
    bench = read_json(repo / "metrics/bench.json")
    assert bench["llm_bench_skipped"] == 1 and bench["asr_rtf"] > 0
    assert not {"ttft_ms", "decode_tok_per_s", "peak_rss_mb"} & set(bench)
    assert read_json(repo / "reports/bench_llm_samples.json") == []
    report = (repo / "reports/report.md").read_text(encoding="utf-8")
    row = next(line for line in report.splitlines() if line.startswith("| smollm2"))
    assert row.count("n/a (no board)") == 4 and "The LLM was not benchmarked" in report
    s = store(repo)
    skipped = s.search([s.experiment_id("rkpipe")], f"params.`board.rkllm_lib` = '{missing}'")
    assert len(skipped) == 1 and skipped[0].status == "FINISHED"
    assert skipped[0].metrics["llm_bench_skipped"] == 1 and "ttft_ms" not in skipped[0].metrics
