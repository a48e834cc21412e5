"""Contract tests of the rkllm backend against a recording fake of ``rkllm.api``.

The real ``worker.py`` runs in a subprocess of this interpreter with
``PYTHONPATH=<poison>:<dist-info>:tests/contract/fake_rkllm``; the poison directory holds an
``rkpipe`` package that raises on import, so any rkpipe import by the worker fails the run.
The last test (marker ``toolkit``) drives the REAL toolkit when ``RKPIPE_RKLLM_PYTHON``
points at an interpreter where ``import rkllm.api`` works.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rkpipe.backends.base import QuantizeRequest
from rkpipe.backends.rkllm import RkllmBackend
from rkpipe.backends.rkllm import protocol as P
from rkpipe.backends.rkllm.run import new_marker
from rkpipe.backends.rkllm.spec import build_spec
from rkpipe.config.platforms import PLATFORMS, RKLLM_DTYPES
from rkpipe.config.schema import QuantConfig, RkllmQuantConfig
from rkpipe.errors import BackendError, ConfigError

pytestmark = pytest.mark.contract

FAKE = Path(__file__).resolve().parent / "fake_rkllm"
MAGIC = b"FAKE-RKLLM\n"
TARGETS = [p for p, spec in PLATFORMS.items() if spec.rkllm_dtypes]
VOCAB = 32
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
    "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2,
    "head_dim": 64, "num_hidden_layers": 1, "vocab_size": VOCAB,
}  # fmt: skip
FAKE_SWITCHES = (
    "FAKE_RKLLM_FAIL", "FAKE_RKLLM_CRASH", "FAKE_RKLLM_OOM", "FAKE_RKLLM_NO_LOGITS",
    "FAKE_RKLLM_CUDA",
)  # fmt: skip
GPU = RkllmQuantConfig(device="cuda")  # grq must use the GPU (rkllm-toolkit's guides)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A minimal valid safetensors file of float32 zeros."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def make_model(root: Path, **overrides: int) -> Path:
    model = root / "float"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, **overrides}))
    write_safetensors(model / "model.safetensors", {"model.embed_tokens.weight": (VOCAB, 8)})
    return model


class FakeToolkit:
    """The environment of the fake: version, dist-info, call record."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch = root, monkeypatch
        self.record = root / "calls.jsonl"
        poison = root / "poison" / "rkpipe"
        poison.mkdir(parents=True)
        (poison / "__init__.py").write_text("raise ImportError('the worker imported rkpipe')\n")
        for name in FAKE_SWITCHES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("RKPIPE_RKLLM_PYTHON", sys.executable)
        monkeypatch.setenv("FAKE_RKLLM_RECORD", str(self.record))
        self.set_version("1.3.0")

    def set_version(self, version: str, dist_info: bool = True) -> None:
        """Imitate ``version``; with ``dist_info`` importlib.metadata reports it too."""
        site = self.root / f"site-{version}-{int(dist_info)}"
        if dist_info:
            meta = site / f"rkllm_toolkit-{version}.dist-info"
            meta.mkdir(parents=True, exist_ok=True)
            meta.joinpath("METADATA").write_text(
                f"Metadata-Version: 2.1\nName: rkllm-toolkit\nVersion: {version}\n"
            )
        paths = [self.root / "poison", site, FAKE]
        self.monkeypatch.setenv("PYTHONPATH", os.pathsep.join(map(str, paths)))
        self.monkeypatch.setenv("FAKE_RKLLM_VERSION", version)

    def with_gpu(self) -> None:
        """This host has a GPU (``load_huggingface(device="cuda")`` works)."""
        self.monkeypatch.setenv("FAKE_RKLLM_CUDA", "1")

    def calls(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeToolkit:
    return FakeToolkit(tmp_path, monkeypatch)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "models" / "llm")


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    path = tmp_path / "calibration.json"
    records = [{"input": "Hi", "target": "Hello!"}, {"input": "2+2", "target": "4"}]
    path.write_text(json.dumps(records))
    return path


def make_request(
    model: Path, calibration: Path, platform: str, dtype: str, **quant: object
) -> QuantizeRequest:
    rkllm = quant.pop("rkllm", RkllmQuantConfig())
    config = QuantConfig(backend="rkllm", dtype=dtype, rkllm=rkllm, **quant)  # type: ignore[arg-type]
    return QuantizeRequest(
        float_model_dir=model,
        onnx_fp32_dir=None,
        calibration_json=calibration,
        quant=config,
        platform=platform,
        out_dir=model.parent / "quantized",
    )


def drive_worker(tmp_path: Path, steps: list[P.Step]) -> None:
    """Run the worker on ``steps`` with no rkpipe-side validation."""
    RkllmBackend().run(P.WorkerRequest(steps, new_marker()), sys.executable, tmp_path / "w.log")


def no_rkllm_left(request: QuantizeRequest) -> bool:
    parent = Path(request.out_dir).parent
    return not Path(request.out_dir).exists() and not list(parent.rglob("*.rkllm"))


# --------------------------------------------------------------------------------------------
# Exact calls
# --------------------------------------------------------------------------------------------

CONFIGS = [
    ("rk3588", "w8a8", "normal", 3),
    ("rk3576", "w4a16_g128", "grq", 2),
    ("rk3562", "w4a8_g32", "normal", 1),
    ("rv1126b", "w4a16", "normal", 1),
]


@pytest.mark.parametrize(("platform", "dtype", "algorithm", "cores"), CONFIGS)
def test_recorded_calls_and_outputs(fake, model, calibration, platform, dtype, algorithm, cores):
    rkllm = GPU if algorithm == "grq" else RkllmQuantConfig()
    fake.with_gpu()
    request = make_request(
        model,
        calibration,
        platform,
        dtype,
        algorithm=algorithm,
        num_npu_core=cores,
        hybrid_rate=0.25,
        max_context=8192,
        rkllm=rkllm,
    )
    result = RkllmBackend().quantize(request)

    calls = fake.calls()
    assert [c["method"] for c in calls] == ["load_huggingface", "build", "export_rkllm"]
    assert calls[0]["args"] == {
        "model": str(model.resolve()),
        "model_lora": None,
        "device": rkllm.device,
        "dtype": "float32",
        "custom_config": None,
        "load_weight": True,
    }
    build = {
        "do_quantization": True,
        "optimization_level": 1,
        "quantized_dtype": dtype,
        "quantized_algorithm": algorithm,
        "target_platform": platform,
        "num_npu_core": cores,
        "extra_qparams": None,
        "dataset": str(calibration.resolve()),
        "hybrid_rate": 0.25,
        "max_context": 8192,
    }
    assert calls[1]["args"] == build
    export = Path(calls[2]["args"]["export_path"])
    assert export.name == "model.rkllm" and export.parents[2] == model.parent.resolve()
    assert not export.exists()  # the temporary directory was renamed into place

    data = result.artifact.read_bytes()
    assert result.artifact == request.out_dir / "model.rkllm" and data.startswith(MAGIC)
    assert json.loads(data[len(MAGIC) :]) == build
    manifest = json.loads((request.out_dir / "quant_manifest.json").read_text())
    assert manifest["build_call"] == {**build, "dataset": str(calibration)}
    assert manifest["toolkit_version"] == "1.3.0" and manifest["load_dtype"] == "float32"
    assert manifest["platform"] == platform and manifest["quantized_dtype"] == dtype
    assert len(manifest["files"]["model.rkllm"]["sha256"]) == 64
    assert json.loads(result.params["rkllm.build_call"]) == manifest["build_call"]
    assert result.params["rkllm.toolkit_version"] == "1.3.0"
    assert {"size_mb", "quantize_s", "quantize_peak_rss_mb", "rkllm_build_s"} <= set(result.metrics)
    assert result.metrics["quantize_peak_rss_mb"] > 1
    for log in (model.parent / "rkllm_toolkit.log", request.out_dir / "rkllm_toolkit.log"):
        assert "Building model" in log.read_text() and "Model has been saved" in log.read_text()


def test_lora_recovery_algorithm_exports_both_models(fake, model, calibration):
    fake.with_gpu()
    request = make_request(model, calibration, "rk3576", "w4a16", algorithm="grq_r8", rkllm=GPU)
    result = RkllmBackend().quantize(request)
    assert sorted(p.name for p in result.out_dir.glob("*.rkllm")) == [
        "model.rkllm",
        "model_lora.rkllm",
    ]
    assert set(json.loads((result.out_dir / "quant_manifest.json").read_text())["files"]) == {
        "model.rkllm",
        "model_lora.rkllm",
    }


def test_gguf_source_and_extra_qparams(fake, tmp_path, calibration):
    gguf_dir = tmp_path / "models" / "llm" / "float"
    gguf_dir.mkdir(parents=True)
    (gguf_dir / "model-q4_0.gguf").write_bytes(b"GGUF" + bytes(64))
    qparams = tmp_path / "grq.qparams"
    qparams.write_bytes(b"cache")
    request = make_request(
        gguf_dir,
        calibration,
        "rk3576",
        "w4a16_g32",
        algorithm="grq",
        rkllm=RkllmQuantConfig(device="cuda", extra_qparams={"path": str(qparams)}),
    )
    result = RkllmBackend().quantize(request)
    load, build, _ = fake.calls()
    assert load == {"method": "load_gguf", "args": {"model": str(gguf_dir / "model-q4_0.gguf")}}
    assert build["args"]["extra_qparams"] == str(qparams)
    manifest = json.loads((result.out_dir / "quant_manifest.json").read_text())
    assert manifest["load_call"]["method"] == "load_gguf" and manifest["load_dtype"] is None
    missing = RkllmQuantConfig(extra_qparams={"path": str(tmp_path / "nope.qparams")})
    with pytest.raises(ConfigError, match="extra_qparams: .*nope.qparams not found"):
        RkllmBackend().quantize(
            make_request(gguf_dir, calibration, "rk3576", "w4a16_g32", rkllm=missing)
        )


# --------------------------------------------------------------------------------------------
# The platform matrix, end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", RKLLM_DTYPES)
@pytest.mark.parametrize("platform", TARGETS)
def test_every_platform_and_dtype(fake, model, calibration, tmp_path, platform, dtype):
    spec = PLATFORMS[platform]
    request = make_request(model, calibration, platform, dtype)
    if dtype in spec.rkllm_dtypes:
        result = RkllmBackend().quantize(request)
        assert result.artifact.read_bytes().startswith(MAGIC)
        assert fake.calls()[1]["args"]["num_npu_core"] == spec.max_npu_cores
        return
    with pytest.raises(ConfigError, match="not supported on"):
        build_spec(request)  # rkpipe refuses before any conversion...
    ok = make_request(model, calibration, platform, spec.rkllm_dtypes[0])
    steps = build_spec(ok)
    steps.build.quantized_dtype = dtype  # ...and so does the toolkit, when asked directly
    with pytest.raises(BackendError) as err:
        drive_worker(tmp_path, [steps.load, steps.build])
    message = str(err.value)
    assert f"target_platform: {platform} not support quantized_dtype: {dtype}!" in message
    assert "build step failed" in message and "w.log" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"target_platform": "rk3576", "num_npu_core": 3}, "not support num_npu_core: 3!"),
        ({"quantized_algorithm": "grq"}, "grq only support w4a16"),
        ({"max_context": 5000}, "must be <= 16384 and aligned to 32"),
        ({"max_context": 32768}, "must be <= 16384 and aligned to 32"),
        ({"hybrid_rate": 1.0}, "hybrid_rate: 1.0 must be in [0, 1)"),
        ({"optimization_level": 2}, "optimization_level: 2 not support"),
        ({"target_platform": "rk3599"}, "target_platform: rk3599 not support!"),
    ],
)
def test_toolkit_rejections_surface(fake, model, calibration, tmp_path, change, expected):
    steps = build_spec(make_request(model, calibration, "rk3588", "w8a8"))
    for key, value in change.items():
        setattr(steps.build, key, value)
    with pytest.raises(BackendError, match="build step failed") as err:
        drive_worker(tmp_path, [steps.load, steps.build])
    assert expected in str(err.value)


def test_bad_calibration_rejected_by_toolkit(fake, model, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x"}]))
    steps = build_spec(make_request(model, bad, "rk3588", "w8a8"))
    with pytest.raises(BackendError, match='must be a list of {"input", "target"}'):
        drive_worker(tmp_path, [steps.load, steps.build])


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["load", "build", "export"])
def test_step_failure_names_step_and_leaves_nothing(fake, model, calibration, monkeypatch, step):
    monkeypatch.setenv("FAKE_RKLLM_FAIL", step)
    request = make_request(model, calibration, "rk3588", "w8a8")
    with pytest.raises(BackendError) as err:
        RkllmBackend().quantize(request)
    message = str(err.value)
    assert f"rkllm-toolkit {step} step failed" in message
    assert f"injected by FAKE_RKLLM_FAIL={step}" in message
    assert str(model.parent / "rkllm_toolkit.log") in message
    assert no_rkllm_left(request)
    assert "injected" in (model.parent / "rkllm_toolkit.log").read_text()


@pytest.mark.parametrize("step", ["build", "export"])
def test_crash_reports_exit_code_and_last_lines(fake, model, calibration, monkeypatch, step):
    monkeypatch.setenv("FAKE_RKLLM_CRASH", step)
    request = make_request(model, calibration, "rk3576", "w4a16")
    with pytest.raises(BackendError) as err:
        RkllmBackend().quantize(request)
    message = str(err.value)
    assert f"crashed during the {step} step: exited with code 3 without a response" in message
    assert f"fake rkllm: crashing in {step}" in message
    assert no_rkllm_left(request)  # export: the partial file went with the temp directory


def test_oom_kill_explained(fake, model, calibration, monkeypatch):
    monkeypatch.setenv("FAKE_RKLLM_OOM", "build")
    request = make_request(model, calibration, "rk3588", "w8a8_g128")
    with pytest.raises(BackendError) as err:
        RkllmBackend().quantize(request)
    message = str(err.value)
    assert "ran out of memory during the build step" in message
    assert "exit -9" in message and "GB RAM" in message and "#197" in message
    assert "smaller model" in message and "swap" in message
    assert no_rkllm_left(request)


def test_missing_toolkit_and_bad_interpreter(fake, model, calibration, tmp_path, monkeypatch):
    request = make_request(model, calibration, "rk3588", "w8a8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "poison"))
    with pytest.raises(BackendError, match="cannot import rkllm.api in the rkllm interpreter"):
        RkllmBackend().quantize(request)
    monkeypatch.setenv("RKPIPE_RKLLM_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(BackendError, match="RKPIPE_RKLLM_PYTHON=.* is not an executable"):
        RkllmBackend().quantize(request)
    assert no_rkllm_left(request)


def test_worker_rejects_other_protocol_version(fake):
    worker = Path(P.__file__).with_name("worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker)],
        input='{"protocol": 99, "steps": []}',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "protocol version 99, expected 1" in proc.stderr


# --------------------------------------------------------------------------------------------
# Version adaptation
# --------------------------------------------------------------------------------------------

LOAD_1_2 = {"dtype": "float16", "custom_config": None, "load_weight": True}


@pytest.mark.parametrize(
    ("version", "dist_info", "algorithm", "sent_algorithm", "has_max_context", "load_extra"),
    [
        ("1.1.2", True, "grq", "gdq", False, {}),
        ("1.2.0", True, "gdq", "gdq", True, LOAD_1_2),
        ("1.2.1", False, "grq", "grq", True, LOAD_1_2),  # version from rkllm.__version__
        ("1.3.0", True, "grq", "grq", True, LOAD_1_2),
    ],
)
def test_version_adaptation(
    fake,
    model,
    calibration,
    version,
    dist_info,
    algorithm,
    sent_algorithm,
    has_max_context,
    load_extra,
):
    fake.set_version(version, dist_info=dist_info)
    fake.with_gpu()
    device = "cuda" if algorithm == "grq" else "cpu"
    request = make_request(
        model,
        calibration,
        "rk3576",
        "w4a16_g64",
        algorithm=algorithm,
        rkllm=RkllmQuantConfig(load_dtype="float16", device=device),
    )
    result = RkllmBackend().quantize(request)
    load, build, export = (c["args"] for c in fake.calls())
    assert load == {
        "model": str(model.resolve()),
        "model_lora": None,
        "device": device,
        **load_extra,
    }
    assert build["quantized_algorithm"] == sent_algorithm
    assert ("max_context" in build) is has_max_context
    assert list(export) == ["export_path"]
    manifest = json.loads((result.out_dir / "quant_manifest.json").read_text())
    assert manifest["toolkit_version"] == version == result.params["rkllm.toolkit_version"]
    assert bool(manifest["adaptations"]) is (version == "1.1.2" or algorithm != sent_algorithm)


def test_unknown_keyword_raises_like_the_real_signature(fake, model, calibration):
    fake.set_version("1.1.2", dist_info=False)
    fake.set_version("1.3.0")  # importlib.metadata says 1.3.0, the fake behaves as 1.1.2
    fake.monkeypatch.setenv("FAKE_RKLLM_VERSION", "1.1.2")
    request = make_request(model, calibration, "rk3588", "w8a8")
    with pytest.raises(BackendError, match="load step failed.*TypeError.*'dtype'"):
        RkllmBackend().quantize(request)
    assert no_rkllm_left(request)


@pytest.mark.parametrize(
    ("version", "platform", "dtype", "algorithm", "expected"),
    [
        ("1.2.0", "rk3576", "w4a16", "normal_r8", "needs rkllm-toolkit >= 1.2.1"),
        ("1.3.0", "rk3576", "w4a16", "gdq", "gdq was removed in rkllm-toolkit 1.3.0; use grq"),
        ("1.1.2", "rk3562", "w8a8", "normal", "target_platform: rk3562 not support!"),
        ("1.2.0", "rv1126b", "w8a8", "normal", "target_platform: rv1126b not support!"),
    ],
)
def test_version_limits(fake, model, calibration, version, platform, dtype, algorithm, expected):
    fake.set_version(version)
    request = make_request(model, calibration, platform, dtype, algorithm=algorithm)
    with pytest.raises(BackendError, match="build step failed") as err:
        RkllmBackend().quantize(request)
    assert expected in str(err.value) and no_rkllm_left(request)


# --------------------------------------------------------------------------------------------
# Group sizes
# --------------------------------------------------------------------------------------------


def test_group_size_must_divide_linear_dims(fake, tmp_path, calibration):
    smol = make_model(
        tmp_path / "smol",
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        head_dim=64,
    )
    with pytest.raises(ConfigError) as err:
        RkllmBackend().quantize(make_request(smol, calibration, "rk3576", "w4a16_g128"))
    message = str(err.value)
    assert "hidden_size=576 is not a multiple of 128" in message
    assert "dtypes that fit on rk3576: w4a16, w4a16_g32, w4a16_g64, w8a8" in message
    assert fake.calls() == []  # refused before starting the toolkit
    odd = make_model(tmp_path / "odd", intermediate_size=1000)
    with pytest.raises(ConfigError, match="intermediate_size=1000 is not a multiple of 32"):
        RkllmBackend().quantize(make_request(odd, calibration, "rk3562", "w4a8_g32"))
    result = RkllmBackend().quantize(make_request(smol, calibration, "rk3576", "w4a16_g64"))
    assert result.artifact.is_file()


# --------------------------------------------------------------------------------------------
# Simulated perplexity (x86 get_logits)
# --------------------------------------------------------------------------------------------


def add_tokenizer(model: Path) -> Path:
    """A word-level tokenizer over w0..w31 and a text whose next token is always id + 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(model)
    text = model.parent / "eval.txt"
    text.write_text(" ".join(f"w{i % VOCAB}" for i in range(3 * VOCAB + 5)))
    return text


def test_simulated_perplexity(fake, model, calibration, monkeypatch):
    text = add_tokenizer(model)
    request = make_request(model, calibration, "rk3588", "w8a8")
    metrics = RkllmBackend().simulate_perplexity(request, text, seqlen=VOCAB)
    # fake logits: 2.0 on the right token, 0 elsewhere -> CE = log(e^2 + V - 1) - 2 everywhere
    expected = math.exp(math.log(math.e**2 + VOCAB - 1) - 2)
    assert metrics["sim_ppl"] == pytest.approx(expected, rel=1e-4)
    assert metrics["sim_ppl_windows"] == 3 and metrics["sim_ppl_seqlen"] == VOCAB
    calls = fake.calls()
    assert [c["method"] for c in calls] == ["load_huggingface", "build"] + ["get_logits"] * 3
    assert calls[2]["args"] == {"input_ids_shape": [1, VOCAB]}
    assert not request.out_dir.exists()

    monkeypatch.setenv("FAKE_RKLLM_NO_LOGITS", "1")
    with pytest.raises(BackendError, match="perplexity step failed.*no get_logits"):
        RkllmBackend(perplexity_text=text, perplexity_seqlen=VOCAB).quantize(request)
    assert no_rkllm_left(request)


# --------------------------------------------------------------------------------------------
# The real toolkit
# --------------------------------------------------------------------------------------------


@pytest.mark.toolkit
def test_real_toolkit_converts_a_tiny_llama(tmp_path, calibration):
    python = os.environ.get("RKPIPE_RKLLM_PYTHON")
    if not python:
        pytest.skip(
            "RKPIPE_RKLLM_PYTHON is not set: point it at the python of a venv with "
            "Rockchip's rkllm-toolkit wheel to run the real toolkit"
        )
    probe = subprocess.run([python, "-c", "import rkllm.api"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"`import rkllm.api` fails in {python}: {probe.stderr.strip()[-300:]}")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=VOCAB,
    )
    model_dir = tmp_path / "models" / "llm" / "float"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    add_tokenizer(model_dir)
    request = make_request(model_dir, calibration, "rk3588", "w8a8", num_npu_core=3)
    result = RkllmBackend().quantize(request)
    assert result.artifact.stat().st_size > 0
    assert result.params["rkllm.toolkit_version"][0].isdigit()


def test_grq_must_use_the_gpu_in_rkpipe_and_in_the_toolkit(fake, model, calibration, tmp_path):
    """The guides: grq "must use the GPU". rkpipe refuses it on CPU before the toolkit starts;
    the fake toolkit refuses it too when driven directly."""
    request = make_request(model, calibration, "rk3576", "w4a16", algorithm="grq")
    with pytest.raises(ConfigError, match=r"needs quant.rkllm.device=cuda .*grq must use the GPU"):
        build_spec(request)
    steps = build_spec(make_request(model, calibration, "rk3576", "w4a16"))
    steps.build.quantized_algorithm = "grq"
    with pytest.raises(BackendError, match="grq must use the GPU, load with device='cuda'"):
        drive_worker(tmp_path, [steps.load, steps.build])


@pytest.mark.parametrize("algorithm", ["normal_r0", "grq_r65"])
def test_a_recovery_rank_outside_1_to_64_is_refused_before_the_toolkit(
    fake, model, calibration, algorithm
):
    request = make_request(model, calibration, "rk3576", "w4a16", algorithm=algorithm, rkllm=GPU)
    with pytest.raises(ConfigError, match="rank N of _rN must be 1 to 64"):
        build_spec(request)
    assert fake.calls() == []


def test_the_fake_takes_the_vendor_examples_spellings_and_tensors_only(fake, model):
    """Rockchip's 1.3.0 export_rkllm.py passes "W8A8" and "RK3588"; get_logits gets a tensor."""
    import subprocess

    script = f"""
import torch
from rkllm.api import RKLLM
llm = RKLLM()
assert llm.load_huggingface(model={str(model)!r}) == 0
assert llm.build(quantized_dtype="W8A8", target_platform="RK3588", num_npu_core=3) == 0
assert llm.get_logits({{"input_ids": torch.tensor([[1, 2, 3]])}}).shape == (1, 3, {VOCAB})
try:
    llm.get_logits({{"input_ids": [[1, 2, 3]]}})
except TypeError as exc:
    print("refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "refused: input_ids must be a torch.Tensor, got list" in out.stdout
