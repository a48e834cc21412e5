"""Contract tests of ``asr.backend=rknn`` against a recording fake of rknn-toolkit2's ``rknn.api``.

The real ``rknn_worker.py`` runs in a subprocess of this interpreter with
``PYTHONPATH=<poison>:tests/contract/fake_rknn``; the poison directory holds an ``rkpipe`` package
that raises on import, so any rkpipe import by the worker fails the run. The model is a tiny
exported wav2vec2 (its whole ``model.onnx`` is the encoder) and the clips are synthetic tones.
The last test (marker ``toolkit``) drives the REAL rknn-toolkit2 when ``RKPIPE_RKNN_PYTHON``
points at an interpreter where ``import rknn.api`` works (``bash scripts/setup_rknn.sh``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from rkpipe.asr.rknn import RKNN_FILE, convert_encoder_rknn
from rkpipe.config.schema import AsrConfig, AsrInitConfig, AsrRknnConfig
from rkpipe.errors import AsrError, BackendError

pytestmark = pytest.mark.contract

FAKE = Path(__file__).resolve().parent / "fake_rknn"
SR = 16000
SECONDS = 1.0
CTC_INIT = AsrInitConfig(
    d_model=32,
    encoder_layers=1,
    attention_heads=2,
    ffn_dim=64,
    vocab_size=32,
    conv_dim=32,
    conv_pos_kernel=16,
    conv_pos_groups=4,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from rkpipe.asr.export import export_fp32_onnx
    from rkpipe.asr.model import acquire_asr

    root = tmp_path_factory.mktemp("rknn")
    acquire_asr(AsrConfig(name="w2v", architecture="wav2vec2", init=CTC_INIT), root / "model")
    export_fp32_onnx(root / "model", root / "fp32")
    return root / "fp32"


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Path:
    """Point the worker at the fake toolkit; returns the call record file."""
    poison = tmp_path / "poison" / "rkpipe"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the worker imported rkpipe')\n")
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "poison"), str(FAKE)]))
    monkeypatch.setenv("RKPIPE_RKNN_PYTHON", sys.executable)
    monkeypatch.setenv("FAKE_RKNN_RECORD", str(record))
    for name in ("FAKE_RKNN_FAIL", "FAKE_RKNN_CRASH"):
        monkeypatch.delenv(name, raising=False)
    return record


def _clips(n: int = 3) -> list:
    t = np.arange(int(SR * SECONDS * 0.8)) / SR
    return [
        (f"c{i}", (0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t)).astype(np.float32), "x")
        for i in range(n)
    ]


def _calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _cfg(**kw) -> AsrRknnConfig:
    return AsrRknnConfig(input_seconds=SECONDS, **kw)


@pytest.mark.parametrize("quantize", [False, True], ids=["fp16", "int8"])
def test_recorded_calls_artifact_and_simulator(fake, exported, tmp_path, quantize):
    out = tmp_path / "asr" / "rknn"
    cfg = _cfg(do_quantization=quantize, target_platform="rk3576")
    metrics = convert_encoder_rknn(exported, out, cfg, clips=_clips())

    calls = _calls(fake)
    assert [c["method"] for c in calls] == [
        "config",
        "load_onnx",
        "build",
        "export_rknn",
        "init_runtime",
        "inference",
        "inference",
        "release",
    ]
    assert calls[0]["args"] == {
        "target_platform": "rk3576",
        "mean_values": None,
        "std_values": None,
        "quantized_dtype": "w8a8",
        "quantized_algorithm": "normal",
        "optimization_level": 3,
    }
    assert calls[1]["args"] == {
        "model": str((exported / "model.onnx").resolve()),
        "inputs": ["input_values"],
        "input_size_list": [[1, int(SR * SECONDS)]],
    }
    build = calls[2]["args"]
    assert build["do_quantization"] is quantize and (build["dataset"] is not None) is quantize
    assert calls[4]["args"] == {}  # no target: the x86 simulator
    assert calls[5]["args"] == {
        "inputs": [{"ndarray": [1, int(SR * SECONDS)]}],
        "data_format": "nchw",
    }

    assert (out / RKNN_FILE).read_bytes().startswith(b"FAKE-RKNN\n")
    manifest = json.loads((out / "rknn_manifest.json").read_text())
    assert manifest["dtype"] == ("w8a8" if quantize else "float16")
    assert manifest["toolkit_version"] in ("unknown", "2.5.0")
    assert [s["op"] for s in manifest["steps"]][-1] == "inference"
    assert len(manifest["sha256"]) == 64 and (out / "rknn_toolkit.log").is_file()
    assert 0.999 < metrics["rknn_sim_cosine_min"] <= 1.0 + 1e-9
    assert metrics["rknn_sim_inputs"] == 2 and metrics["rknn_size_mb"] >= 0


def test_no_simulation_stops_after_export(fake, exported, tmp_path):
    metrics = convert_encoder_rknn(exported, tmp_path / "r", _cfg(simulate=False), clips=_clips(1))
    assert [c["method"] for c in _calls(fake)] == [
        "config",
        "load_onnx",
        "build",
        "export_rknn",
        "release",
    ]
    assert "rknn_sim_cosine_min" not in metrics


@pytest.mark.parametrize("step", ["config", "load_onnx", "build", "export_rknn", "inference"])
def test_a_failing_step_is_named_and_leaves_no_output(fake, exported, tmp_path, monkeypatch, step):
    monkeypatch.setenv("FAKE_RKNN_FAIL", step)
    out = tmp_path / "r"
    with pytest.raises(BackendError, match=rf"rknn-toolkit2 {step} step failed .*full log"):
        convert_encoder_rknn(exported, out, _cfg(), clips=_clips(2))
    assert not out.exists()
    assert "injected by FAKE_RKNN_FAIL" in (tmp_path / "rknn_toolkit.log").read_text()


def test_the_toolkit_rejects_what_rkpipe_lets_through(fake, exported, tmp_path):
    with pytest.raises(BackendError, match="config step failed.*target_platform rk9999"):
        convert_encoder_rknn(
            exported, tmp_path / "r", _cfg(target_platform="rk9999"), clips=_clips(1)
        )


def test_a_crashing_worker_is_reported_with_its_exit_code(fake, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RKNN_CRASH", "build")
    with pytest.raises(BackendError, match="exited with code 3 without a response.*crashing"):
        convert_encoder_rknn(exported, tmp_path / "r", _cfg(), clips=_clips(1))


def test_missing_toolkit_says_how_to_install(fake, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "poison"))  # no rknn package
    with pytest.raises(BackendError, match="cannot import rknn.api.*setup_rknn.sh"):
        convert_encoder_rknn(exported, tmp_path / "r", _cfg(), clips=_clips(1))
    monkeypatch.setenv("RKPIPE_RKNN_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(BackendError, match="RKPIPE_RKNN_PYTHON.*not an executable"):
        convert_encoder_rknn(exported, tmp_path / "r", _cfg(), clips=_clips(1))


def test_opset_above_19_is_refused_before_the_toolkit_runs(fake, exported, tmp_path):
    import shutil

    import onnx

    copy = tmp_path / "fp32"
    shutil.copytree(exported, copy)
    model = onnx.load(str(copy / "model.onnx"))
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 21
    onnx.save(model, str(copy / "model.onnx"))
    with pytest.raises(AsrError, match="opset 21; rknn-toolkit2 accepts opset <= 19"):
        convert_encoder_rknn(copy, tmp_path / "r", _cfg(), clips=_clips(1))
    assert _calls(fake) == []


@pytest.mark.toolkit
@pytest.mark.skipif(
    not os.environ.get("RKPIPE_RKNN_PYTHON"),
    reason="set RKPIPE_RKNN_PYTHON to a .venv-rknn python (scripts/setup_rknn.sh)",
)
def test_real_toolkit_converts_and_simulates(exported, tmp_path):
    for quantize in (False, True):
        out = tmp_path / f"r{int(quantize)}"
        metrics = convert_encoder_rknn(
            exported, out, _cfg(do_quantization=quantize), clips=_clips(2)
        )
        assert (out / RKNN_FILE).stat().st_size > 1000
        assert metrics["rknn_sim_cosine_min"] > (0.95 if quantize else 0.999)


def _testset(root: Path, variants: tuple[str, ...], per_variant: int) -> Path:
    """A test set of tone clips in ``variants`` (transcripts.jsonl as the asr_testset stage)."""
    import wave

    root.mkdir()
    rows = []
    for v, variant in enumerate(variants):
        for i, (_, audio, _) in enumerate(_clips(per_variant)):
            name = f"clip_{i:03d}_{variant}.wav"
            with wave.open(str(root / name), "wb") as out:
                out.setnchannels(1), out.setsampwidth(2), out.setframerate(SR)
                out.writeframes((audio * (0.5 + 0.2 * v) * 32767).astype("<i2").tobytes())
            rows.append({"audio": name, "text": "a tone", "variant": variant})
    (root / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_simulated_test_clips_give_wer_per_variant(fake, exported, tmp_path):
    from rkpipe.asr.rknn_wer import pick_eval_clips

    testset = _testset(tmp_path / "testset", ("clean", "white_10db"), per_variant=3)
    eval_clips = pick_eval_clips(testset, per_variant=2)
    assert [(name, group) for name, _, _, group in eval_clips] == [
        ("clip_000_clean.wav", "clean"), ("clip_001_clean.wav", "clean"),
        ("clip_000_white_10db.wav", "white_10db"), ("clip_001_white_10db.wav", "white_10db"),
    ]  # fmt: skip
    metrics = convert_encoder_rknn(
        exported, tmp_path / "r", _cfg(), clips=_clips(2), eval_clips=eval_clips
    )
    methods = [c["method"] for c in _calls(fake)]
    # the simulator runs the 4 test clips, not the calibration clips
    assert methods.count("inference") == 4 and methods.index("init_runtime") < methods.index(
        "inference"
    )
    assert metrics["rknn_sim_clips"] == 4 and metrics["rknn_sim_inputs"] == 4
    for group in ("", ".clean", ".white_10db"):
        for key in ("rknn_sim_wer", "rknn_sim_wer_fp32"):
            assert 0.0 <= metrics[f"{key}{group}"] <= 10.0
        # the fake simulator rounds through float16 only: the same greedy CTC labels
        assert metrics[f"rknn_sim_wer_delta{group}"] == 0.0
    assert metrics["rknn_sim_empty"] == 0.0


def test_an_encoder_that_empties_transcripts_is_counted():
    from rkpipe.asr.rknn_wer import _wer_metrics

    refs = ["the train leaves at seven", "a cat", "a dog"]
    hyps = {"sim": ["", "a cat", ""], "fp32": ["the train leaves at seven", "a cat", ""]}
    m = _wer_metrics(refs, hyps, ["clean", "clean", "white_10db"])
    assert m["sim_empty"] == 1.0  # clip 3 is empty on both: not the NPU's fault
    assert m["sim_wer_delta.clean"] == pytest.approx(100 * 5 / 7)
    assert m["sim_wer_delta.white_10db"] == 0.0 and m["sim_clips"] == 3.0
