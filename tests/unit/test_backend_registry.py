"""The backend registry, and the onnxruntime backend's checks that need no model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rkpipe import backends
from rkpipe.backends import available, get_backend, register
from rkpipe.backends.base import Backend, QuantizeRequest
from rkpipe.config.schema import QuantConfig
from rkpipe.errors import BackendError, ConfigError


def test_unknown_backend_error_lists_registered_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_backend("tensorrt")
    message = str(info.value)
    assert "'tensorrt'" in message
    for name in available():
        assert name in message


def test_onnxruntime_is_registered() -> None:
    assert "onnxruntime" in available()
    backend = get_backend("onnxruntime")
    assert backend.name == "onnxruntime"
    assert isinstance(backend, Backend)


@pytest.mark.parametrize("name", available())
def test_every_registered_entry_imports(name: str) -> None:
    backend = get_backend(name)
    assert backend.name == name
    assert callable(backend.quantize)


def test_importing_the_registry_is_cheap() -> None:
    code = (
        "import sys, rkpipe.backends as b; b.available(); "
        "print(sorted(m for m in ('onnxruntime', 'onnx', 'torch', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_register_adds_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends.BACKENDS, "_registered", {})

    @register("fake")
    class Fake:
        def quantize(self, request):  # pragma: no cover - never called
            raise NotImplementedError

    assert "fake" in available()
    assert isinstance(get_backend("fake"), Fake)
    assert Fake.name == "fake"


def _request(tmp_path: Path, quant: QuantConfig, onnx_dir: Path | None) -> QuantizeRequest:
    return QuantizeRequest(
        float_model_dir=tmp_path / "float",
        onnx_fp32_dir=onnx_dir,
        calibration_json=tmp_path / "calib.json",
        quant=quant,
        platform="host",
        out_dir=tmp_path / "out",
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"dtype": "w8a8"}, "quant.dtype"),
        ({"ort_weight_type": "QInt4"}, "quant.ort.weight_type"),
        ({"ort_scheme": "static"}, "quant.ort.scheme"),
    ],
)
def test_onnxruntime_rejects_unsupported_options(tmp_path: Path, change: dict, key: str) -> None:
    quant = QuantConfig()
    for field, value in change.items():
        if field.startswith("ort_"):
            setattr(quant.ort, field[4:], value)
        else:
            setattr(quant, field, value)
    with pytest.raises(ConfigError, match=key):
        get_backend("onnxruntime").quantize(_request(tmp_path, quant, tmp_path / "onnx"))
    assert not (tmp_path / "out").exists()


def test_onnxruntime_needs_the_fp32_export(tmp_path: Path) -> None:
    backend = get_backend("onnxruntime")
    with pytest.raises(BackendError, match="onnx_fp32_dir"):
        backend.quantize(_request(tmp_path, QuantConfig(), None))
    with pytest.raises(BackendError, match="model.onnx not found"):
        backend.quantize(_request(tmp_path, QuantConfig(), tmp_path / "missing"))


def test_fold_weight_transposes_unties_a_shared_weight() -> None:
    np = pytest.importorskip("numpy")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from rkpipe.backends.ort.graph import fold_weight_transposes

    emb = np.arange(12, dtype=np.float32).reshape(4, 3)  # [vocab, hidden]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["h"]),
            helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["h", "emb_t"], ["logits"]),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(emb, "emb")],
    )
    model = helper.make_model(graph)
    assert fold_weight_transposes(model) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [n.op_type for n in model.graph.node] == ["Gather", "MatMul"]
    np.testing.assert_array_equal(inits["emb_t"], emb.T)
    assert "emb" in inits  # still used by the Gather
    onnx.checker.check_model(model)
