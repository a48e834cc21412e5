"""Composition, validation and the platform matrix."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rkpipe.config import compose, compose_yaml, load_params, variant_id
from rkpipe.config.platforms import PLATFORMS
from rkpipe.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    """Hub model configs pin their revision at composition: answer from the cache, no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


GROUPS = [
    "model",
    "asr",
    "calib",
    "quant",
    "platform",
    "board",
    "bench",
    "eval",
    "tracking",
    "paths",
]


def test_committed_params_yaml_matches_conf(repo_root):
    committed = (repo_root / "params.yaml").read_text(encoding="utf-8")
    assert committed == compose_yaml(CONF), "params.yaml is stale: run `rkpipe params`"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for option in sorted((CONF / group).glob("*.yaml")):
        overrides = [f"{group}={option.stem}"]
        if group == "quant" and option.stem.startswith("w"):
            dtype = option.stem
            platform = next(p for p, s in PLATFORMS.items() if dtype in s.rkllm_dtypes)
            overrides.append(f"platform={platform}")
        cfg = compose(CONF, overrides)
        assert cfg is not None


def test_every_experiment_composes():
    for option in sorted((CONF / "experiment").glob("*.yaml")):
        compose(CONF, [f"experiment={option.stem}"])


def test_seed_experiment_is_w8a8_on_rk3576_with_two_cores():
    cfg = compose(CONF, ["experiment=seed_rk3576_w8a8"])
    assert (cfg.quant.backend, cfg.quant.dtype, cfg.platform.name) == ("rkllm", "w8a8", "rk3576")
    assert cfg.quant.num_npu_core == 2


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["platform=rk3588", "quant=w4a16"],
            "quant.dtype='w4a16' is not supported on platform.name='rk3588'; allowed: w8a8, w8a8_g128",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.num_npu_core=3"],
            "quant.num_npu_core=3 is not valid for platform.name='rk3576' (it has 2 NPU core(s)); allowed: 1, 2",
        ),
        (
            ["quant.max_context=4001"],
            "quant.max_context=4001 is not allowed; allowed: a multiple of 32 between 32 and 16384",
        ),
        (
            ["quant.max_context=32768"],
            "quant.max_context=32768 is out of range; allowed: an integer >= 32 and <= 16384",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.hybrid_rate=1.0"],
            "quant.hybrid_rate=1.0 is out of range; allowed: a number >= 0 and < 1",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.optimization_level=2"],
            "quant.optimization_level=2 is not allowed; allowed: 0, 1",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.algorithm=grq"],
            "quant.algorithm='grq' does not apply to quant.dtype='w8a8'",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.dtype=w4a16", "quant.algorithm=grq"],
            "quant.algorithm='grq' needs quant.rkllm.device=cuda (rkllm-toolkit's guide: grq "
            "must use the GPU), not 'cpu'",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.algorithm=normal_r0"],
            "quant.algorithm='normal_r0': the LoRA-recovery rank N of _rN must be 1 to 64",
        ),
        (
            ["platform=rk3576", "quant=w8a8", "quant.algorithm=normal_r65"],
            "the LoRA-recovery rank N of _rN must be 1 to 64",
        ),
        (
            ["quant=w8a8"],
            "platform.name='host' is not allowed; allowed: rk3588, rk3576, rk3562, rv1126b (quant.backend=rkllm needs a SoC)",
        ),
        (["model=nope"], "Could not find 'model/nope'"),
        (["platform=rk9999"], "Available options in 'platform': host rk3562 rk3576 rk3588 rv1126b"),
        (["quant.dtype=int3"], "quant.dtype='int3' is not allowed; allowed: int8, int4"),
        (["model.source=local"], "model.path is required when model.source='local'"),
        (["quant.num_npu_core=two"], "could not be converted to Integer"),
    ],
)
def test_bad_config_fails_with_key_value_and_allowed(overrides, expected):
    with pytest.raises(ConfigError) as info:
        compose(CONF, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_seed_spellings_are_normalised():
    cfg = compose(CONF, ["quant=W8A8", "platform=RK3576"])
    assert (cfg.quant.dtype, cfg.platform.name) == ("w8a8", "rk3576")
    cfg = compose(CONF, ["quant=w8a8", "quant.dtype=W8A8", "platform.name=RK3576"])
    assert (cfg.quant.dtype, cfg.platform.name) == ("w8a8", "rk3576")


def test_num_npu_core_defaults_to_platform_maximum():
    assert compose(CONF, ["quant=w8a8", "platform=rk3588"]).quant.num_npu_core == 3
    assert compose(CONF, ["quant=w4a8_g32", "platform=rk3562"]).quant.num_npu_core == 1


@pytest.mark.parametrize("platform", [p for p in PLATFORMS if p != "host"])
def test_matrix_accepts_exactly_the_documented_dtypes(platform):
    for dtype in PLATFORMS[platform].rkllm_dtypes:
        compose(CONF, [f"platform={platform}", "quant=w8a8", f"quant.dtype={dtype}"])


def test_variant_id_ignores_paths_and_tracking_but_not_quant():
    base = compose(CONF)
    assert variant_id(base) == variant_id(compose(CONF, ["tracking.experiment=other"]))
    assert variant_id(base) != variant_id(compose(CONF, ["quant=ort_int8_per_channel"]))


def test_load_params_rejects_bad_file_quickly(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(compose_yaml(CONF).replace("max_context: 4096", "max_context: 1000"))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="quant.max_context=1000"):
        load_params(bad)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ConfigError, match="not found; run `rkpipe params`"):
        load_params(tmp_path / "missing.yaml")


def test_stage_fails_in_a_second_with_one_line(tmp_path, repo_root):
    params = tmp_path / "params.yaml"
    params.write_text(
        compose_yaml(CONF)
        .replace("name: host", "name: rk3588")
        .replace("\nquant:\n  backend: onnxruntime", "\nquant:\n  backend: rkllm")
        .replace("dtype: int8", "dtype: w4a16")
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "quantize_llm.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("rkpipe quantize_llm: error: invalid config: quant.dtype='w4a16'")
    )
    assert elapsed < 3.0  # includes interpreter start-up; the check itself is far below 1 s
