"""Device accuracy through the rkllm runner's logits mode (RKLLM_INFER_GET_LOGITS), against the
fake runtime, whose logits come from a bigram table this test writes.

The expected PPL, KLD and top-1 are computed here from the table with numpy, independently of
the runner, engine_shared and rkpipe.evaluate.device; the pipeline's figures must match them
within 1e-6 relative. The faults (a runtime without logits mode, NaN logits) must leave the
figures missing with a one-line reason, not crash.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_runtime.build import build_fake_runtime

from rkpipe.evaluate.device import MISSING, evaluate_on_board
from rkpipe.evaluate.llm import build_reference, save_reference

pytestmark = pytest.mark.contract

RUNNER = Path(__file__).resolve().parents[2] / "src/rkpipe/engines/rkllm_runner.py"
VOCAB, ROWS, TOPK = 300, 7, 16
WINDOWS = [[(i * 37 + w * 11) % VOCAB for i in range(40 + 9 * w)] for w in range(3)]


def bigram(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2.5, (ROWS, VOCAB)).astype(np.float32)


def write_table(table: np.ndarray, path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.write(np.asarray(table.shape, dtype=np.int32).tobytes())
        handle.write(table.tobytes())
    return path


def logits_of(table: np.ndarray, window: list[int]) -> np.ndarray:
    return table[np.asarray(window) % ROWS]


def expected(ref: np.ndarray, dev: np.ndarray) -> dict[str, float]:
    """PPL / binned KLD / top-1 of the device table vs the reference table, from scratch."""
    nll, kld, agree, ppl_ref = [], [], [], []
    for window in WINDOWS:
        p_rows, q_rows = logits_of(ref, window)[:-1], logits_of(dev, window)[:-1]
        for p_logit, q_logit, target in zip(p_rows, q_rows, window[1:], strict=True):
            logp = p_logit.astype(np.float64) - np.logaddexp.reduce(p_logit.astype(np.float64))
            logp = np.log(np.exp(logp.astype(np.float16).astype(np.float64)))  # stored float16
            logp -= np.logaddexp.reduce(logp)
            logq = q_logit.astype(np.float64) - np.logaddexp.reduce(q_logit.astype(np.float64))
            top = set(np.argsort(-logp, kind="stable")[:TOPK].tolist())  # ties: lower id first
            rest = [i for i in range(VOCAB) if i not in top]
            p_rest, q_rest = np.logaddexp.reduce(logp[rest]), np.logaddexp.reduce(logq[rest])
            kl = sum(math.exp(logp[i]) * (logp[i] - logq[i]) for i in top)
            kld.append(kl + math.exp(p_rest) * (p_rest - q_rest))
            nll.append(-logq[target])
            ppl_ref.append(-(p_logit[target] - np.logaddexp.reduce(p_logit.astype(np.float64))))
            agree.append(int(np.argmax(q_logit)) == int(np.argmax(p_logit)))
    ppl, ppl_float = math.exp(np.mean(nll)), math.exp(np.mean(ppl_ref))
    return {
        "device_ppl": ppl,
        "device_ppl_delta_pct": 100 * (ppl - ppl_float) / ppl_float,
        "device_kld_mean": float(np.mean(kld)),
        "device_top1_agreement": float(np.mean(agree)),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("device_eval")
    ref_table, dev_table = bigram(1), bigram(1) + bigram(2) * 0.3  # a "quantized" device model
    reference = build_reference(lambda w: logits_of(ref_table, w), WINDOWS)
    save_reference(reference, root / "reference.npz")
    model = root / "tiny.rkllm"
    model.write_bytes(b"the fake runtime only opens it")
    libs = {abi: build_fake_runtime(root / abi.replace(".", "_"), abi) for abi in ("1.2", "1.3")}
    table = write_table(dev_table, root / "bigram.bin")
    return root, libs, model, table, expected(ref_table, dev_table)


def score_on_fake(setup, abi: str, env: dict[str, str]):
    root, libs, model, table, _ = setup

    def run_rows(request: str) -> list[dict]:
        argv = [sys.executable, str(RUNNER), "--lib", str(libs[abi]), "--model", str(model),
                "--eval-request", request]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "FAKE_BIGRAM": str(table), **env})  # fmt: skip
        if out.returncode != 0:
            from rkpipe.errors import BoardError

            raise BoardError(out.stderr.strip().splitlines()[-1])
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    return evaluate_on_board(run_rows, str, root / "reference.npz", TOPK)


@pytest.mark.parametrize("abi", ["1.2", "1.3"])
def test_device_figures_equal_the_independent_computation(setup, abi):
    figures, reason = score_on_fake(setup, abi, {})
    assert reason is None
    want = setup[-1]
    for key, value in want.items():
        assert figures[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert figures[MISSING] == 0.0
    assert figures["device_eval_tokens"] == sum(len(w) - 1 for w in WINDOWS)
    # the device model differs from the reference: the figures are not trivially perfect
    assert want["device_kld_mean"] > 0.01 and want["device_top1_agreement"] < 1.0


def test_a_runtime_without_logits_mode_leaves_the_figures_missing(setup):
    figures, reason = score_on_fake(setup, "1.3", {"FAKE_NO_LOGITS": "1"})
    assert figures == {MISSING: 1.0}
    assert "logits mode" in reason and "\n" not in reason


def test_nan_logits_leave_the_figures_missing(setup):
    figures, reason = score_on_fake(setup, "1.2", {"FAKE_LOGITS_NAN": "1"})
    assert figures == {MISSING: 1.0}
    assert "NaN" in reason


# ------------------------------------------------------------------ LoRA (quantized_algorithm _rN)


def run_plain(setup, abi: str, *args: str, env: dict[str, str] | None = None):
    root, libs, model, table, _ = setup
    argv = [sys.executable, str(RUNNER), "--lib", str(libs[abi]), "--model", str(model), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FAKE_BIGRAM": str(table), **(env or {})})  # fmt: skip


@pytest.mark.parametrize("abi", ["1.2", "1.3"])
def test_the_benchmark_loads_and_selects_the_adapter(setup, abi, tmp_path):
    lora = tmp_path / "model_lora.rkllm"
    lora.write_bytes(b"adapter")
    bench = ["--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repetitions", "2"]
    env = {"FAKE_PREFILL_MS": "1", "FAKE_DECODE_MS_PER_TOKEN": "1"}
    out = run_plain(setup, abi, *bench, "--lora", str(lora), env=env)
    assert out.returncode == 0, out.stderr
    assert f"fake lora loaded: name=rkpipe path={lora} scale=1.000" in out.stderr
    assert out.stderr.count("fake lora used: rkpipe") == 2  # every run passes RKLLMLoraParam
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["lora"] for r in rows] == ["model_lora.rkllm"] * 2
    plain = run_plain(setup, abi, *bench, env=env)
    assert plain.returncode == 0 and "fake lora" not in plain.stderr


def test_a_missing_adapter_is_one_line(setup, tmp_path):
    out = run_plain(setup, "1.3", "--repetitions", "1", "--lora", str(tmp_path / "gone.rkllm"))
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rkllm_runner: error: rkllm_load_lora returned -1")
    assert "missing on the board" in last and "Traceback" not in out.stderr


def test_the_adapter_changes_the_device_figures(setup, tmp_path):
    """Scored with and without the adapter: the fake's adapter reads another bigram row."""
    lora = tmp_path / "model_lora.rkllm"
    lora.write_bytes(b"adapter")
    root = setup[0]

    def figures(*extra: str) -> dict:
        def run_rows(request: str) -> list[dict]:
            out = run_plain(setup, "1.2", "--eval-request", request, *extra)
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

        result, reason = evaluate_on_board(run_rows, str, root / "reference.npz", TOPK)
        assert reason is None
        return result

    with_adapter, without = figures("--lora", str(lora)), figures()
    assert without["device_ppl"] == pytest.approx(setup[-1]["device_ppl"], rel=1e-6)
    assert with_adapter["device_ppl"] != pytest.approx(without["device_ppl"], rel=1e-3)


def rkllm_variant(setup, tmp_path: Path, monkeypatch, *, lora: bool):
    """A composed rkllm variant on board=local whose models and reference live in tmp_path."""
    from rkpipe.config import compose

    root, libs, _, table, _ = setup
    conf = Path(__file__).resolve().parents[2] / "conf"
    cfg = compose(conf, ["quant=w8a8", "platform=rk3588", f"paths.models_dir={tmp_path}/models",
                         f"paths.data_dir={tmp_path}/data", f"board.rkllm_lib={libs['1.3']}"])  # fmt: skip
    quantized = cfg.layout.llm.quantized
    quantized.mkdir(parents=True)
    run_with = {"runtime": "rkllm", "runner": "rkllm_runner", "model": "model.rkllm",
                "host_evaluable": False, "needs_runtime_lib": True}  # fmt: skip
    (quantized / "quant_manifest.json").write_text(json.dumps({"run_with": run_with}))
    (quantized / "model.rkllm").write_bytes(b"model")
    if lora:
        (quantized / "model_lora.rkllm").write_bytes(b"adapter")
    cfg.layout.reference_logits.parent.mkdir(parents=True)
    (cfg.layout.reference_logits).write_bytes((root / "reference.npz").read_bytes())
    monkeypatch.setenv("FAKE_BIGRAM", str(table))
    return cfg


def test_deploy_scores_a_lora_variant_with_and_without_its_adapter(setup, tmp_path, monkeypatch):
    from rkpipe.board.deploy import device_accuracy
    from rkpipe.board.transport import LocalTransport

    cfg = rkllm_variant(setup, tmp_path, monkeypatch, lora=True)
    cfg.eval.device_topk = TOPK
    figures, notes = device_accuracy(cfg, LocalTransport())
    assert notes == {} and figures[MISSING] == 0.0
    # without the adapter: the plain bigram rows, as computed independently above
    assert figures["device_no_lora_ppl"] == pytest.approx(setup[-1]["device_ppl"], rel=1e-6)
    assert figures["device_ppl"] != pytest.approx(figures["device_no_lora_ppl"], rel=1e-3)


def test_deploy_without_an_adapter_scores_once(setup, tmp_path, monkeypatch):
    from rkpipe.board.deploy import device_accuracy
    from rkpipe.board.transport import LocalTransport

    cfg = rkllm_variant(setup, tmp_path, monkeypatch, lora=False)
    cfg.eval.device_topk = TOPK
    figures, notes = device_accuracy(cfg, LocalTransport())
    assert notes == {} and not any(k.startswith("device_no_lora_") for k in figures)
    assert figures["device_ppl"] == pytest.approx(setup[-1]["device_ppl"], rel=1e-6)
