"""The onnxruntime schemes live in one registry (rkpipe.backends.ort.schemes): the validator,
the report/compare labels and the backend's checks read it, so a scheme registered there
validates and labels with no other edit, and a name that is not registered is refused by all."""

from __future__ import annotations

import dataclasses

import pytest

from rkpipe.backends import available, register
from rkpipe.backends.ort import schemes
from rkpipe.config.validate import validate
from rkpipe.errors import ConfigError
from rkpipe.report.compare import quant_label


@pytest.fixture
def dummy_scheme(monkeypatch):
    monkeypatch.setattr(schemes, "SCHEMES", dict(schemes.SCHEMES))
    # the modules that read the table hold the same dict object
    for module in ("rkpipe.config.validate", "rkpipe.report.compare"):
        monkeypatch.setattr(f"{module}.SCHEMES", schemes.SCHEMES)
    return schemes.register(schemes.OrtScheme("int6_test", ("int4",), "six-bit test", block=True))


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
    with pytest.raises(ConfigError, match="allowed: dynamic, matmul_nbits"):
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
