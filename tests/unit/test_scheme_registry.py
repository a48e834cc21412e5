"""The onnxruntime schemes live in one registry (rkpipe.backends.ort.schemes): the validator,
the report/compare labels and the backend's checks read it, so a scheme registered there
validates, runs and labels with no other edit, and a name that is not registered is refused
by all."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from rkpipe.backends import available, register
from rkpipe.backends.ort import schemes
from rkpipe.config.labels import quant_label
from rkpipe.config.validate import validate
from rkpipe.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SixBitTest(schemes.OrtScheme):
    """A scheme defined only here: what a new module of rkpipe.backends.ort.schemes holds."""

    def run(self, job):
        shutil.copy(job.src, job.out_dir / "model.onnx")  # stands in for a real quantizer
        return {"six_bit_rows": 3}

    def params(self, cfg, dtype, facts):
        return {"bits": "6", "block_size": str(cfg.block_size)}


@pytest.fixture
def dummy_scheme(monkeypatch):
    monkeypatch.setattr(schemes, "SCHEMES", dict(schemes.SCHEMES))
    # the modules that read the table hold the same dict object
    for module in ("rkpipe.config.validate", "rkpipe.config.labels"):
        monkeypatch.setattr(f"{module}.SCHEMES", schemes.SCHEMES)
    return schemes.register(SixBitTest("int6_test", ("int4",), "six-bit test", block=True))


def with_quant(cfg, **ort):
    quant = dataclasses.replace(
        cfg.quant, dtype="int4", ort=dataclasses.replace(cfg.quant.ort, **ort)
    )
    return dataclasses.replace(cfg, quant=quant)


def test_a_registered_scheme_validates_and_labels(default_cfg, dummy_scheme):
    cfg = validate(with_quant(default_cfg, scheme="int6_test", block_size=64))
    assert cfg.quant.ort.scheme == "int6_test"
    params = {"quant.backend": "onnxruntime", "quant.dtype": "int4", "quant.ort.scheme": "int6_test",
              "quant.ort.block_size": "64", "quant.ort.accuracy_level": "4"}  # fmt: skip
    assert quant_label(params) == "ort int4 six-bit test (block 64, acc 4)"
    with pytest.raises(ConfigError, match="does not apply to quant.ort.scheme='int6_test'"):
        validate(dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, dtype="int8")))


def test_an_unregistered_scheme_is_refused_naming_the_registry(default_cfg):
    with pytest.raises(ConfigError) as caught:
        validate(with_quant(default_cfg, scheme="int6_test"))
    for name in schemes.SCHEMES:
        assert name in str(caught.value)
    with pytest.raises(ConfigError, match="allowed: dynamic, genai_gguf_exact, genai_int4"):
        schemes.get_scheme("int6_test")


def test_gguf_schemes_label_the_gguf_block_size_not_the_config_value():
    params = {"quant.backend": "onnxruntime", "quant.dtype": "int4", "quant.ort.scheme": "gguf_exact",
              "quant.ort.block_size": "128", "quant.ort.accuracy_level": "0"}  # fmt: skip
    assert quant_label(params) == "ort int4 GGUF blocks (block 32, acc 0)"


def test_a_backend_registered_at_run_time_passes_validation(default_cfg, monkeypatch):
    monkeypatch.setattr("rkpipe.backends.BACKENDS._registered", {})

    @register("fake_npu")
    class FakeNpu:
        def quantize(self, request): ...

    assert "fake_npu" in available()
    quant = dataclasses.replace(default_cfg.quant, backend="fake_npu")
    validate(dataclasses.replace(default_cfg, quant=quant))  # no table of backends elsewhere


def _tiny_fp32_export(root: Path) -> Path:
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "w")],
    )
    (root / "onnx").mkdir(parents=True)
    onnx.save(helper.make_model(graph), str(root / "onnx" / "model.onnx"))
    (root / "onnx" / "config.json").write_text("{}")
    return root / "onnx"


def test_a_registered_scheme_runs_through_the_backend(default_cfg, dummy_scheme, tmp_path):
    from rkpipe.backends import get_backend
    from rkpipe.backends.base import QuantizeRequest

    cfg = validate(with_quant(default_cfg, scheme="int6_test", block_size=64))
    request = QuantizeRequest(
        float_model_dir=tmp_path / "float",
        onnx_fp32_dir=_tiny_fp32_export(tmp_path),
        calibration_json=tmp_path / "calib.json",
        quant=cfg.quant,
        platform="host",
        out_dir=tmp_path / "out",
    )
    result = get_backend("onnxruntime").quantize(request)
    manifest = json.loads((tmp_path / "out" / "quant_manifest.json").read_text())
    assert manifest["scheme"] == "int6_test" and manifest["block_size"] == 64
    assert result.params["bits"] == "6" and result.params["accuracy_level"] == "4"
    assert result.metrics["six_bit_rows"] == 3.0
    assert result.metrics["float_matmul_count"] == 1.0  # the backend counted the scheme's graph


def test_run_names_are_unique_per_scheme():
    """Seven int4 schemes used to share one name (`...|onnxruntime-int4|host|<hash>`)."""
    from pathlib import Path

    from rkpipe.config import compose
    from rkpipe.tracking import run_name

    conf = Path(__file__).resolve().parents[2] / "conf"
    int4 = ["ort_int4_b32", "ort_int4_b64", "ort_int4_b128", "ort_int4_b32_emb4", "ort_int4_hqq"]
    labels = {run_name(compose(conf, [f"quant={q}"])).rsplit("|", 1)[0] for q in int4}
    assert len(labels) == len(int4)
