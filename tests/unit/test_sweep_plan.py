"""Sweep planning: Hydra's grammar expands the grid, invalid combinations are listed with
the reason before anything runs, duplicates are dropped; executor helpers parse DVC."""

from __future__ import annotations

import re

import pytest

from rkpipe.errors import ConfigError
from rkpipe.sweep.driver import job_name
from rkpipe.sweep.executor import Job, exp_run_args, queue_status
from rkpipe.sweep.plan import describe, expand_overrides, plan_sweep
from rkpipe.sweep.search import Objective


def test_choice_range_and_list_expand_like_hydra_basic_sweeper(repo_root):
    grid = expand_overrides(
        [
            "quant=choice(ort_int8,ort_int8_per_channel)",
            "bench.threads=range(1,3)",
            "experiment=smoke",
        ],
        repo_root / "conf",
    )
    assert grid == [
        ("quant=ort_int8", "bench.threads=1", "experiment=smoke"),
        ("quant=ort_int8", "bench.threads=2", "experiment=smoke"),
        ("quant=ort_int8_per_channel", "bench.threads=1", "experiment=smoke"),
        ("quant=ort_int8_per_channel", "bench.threads=2", "experiment=smoke"),
    ]


def test_glob_sees_the_config_group(repo_root):
    grid = expand_overrides(["quant=glob(w8a8*)"], repo_root / "conf")
    assert [g[0] for g in grid] == [
        "quant=w8a8", "quant=w8a8_g128", "quant=w8a8_g256", "quant=w8a8_g512",
    ]  # fmt: skip


def test_seed_spellings_are_accepted(repo_root):
    grid = expand_overrides(["platform=RK3576,RK3588", "quant=W8A8"], repo_root / "conf")
    assert grid == [("platform=rk3576", "quant=w8a8"), ("platform=rk3588", "quant=w8a8")]


def test_invalid_combinations_are_rejected_up_front_with_the_reason(repo_root):
    plan = plan_sweep(["quant=w4a16,w8a8", "platform=rk3588,rk3576"], repo_root / "conf")
    valid = sorted(" ".join(v.overrides) for v in plan.variants)
    assert valid == [
        "quant=w4a16 platform=rk3576", "quant=w8a8 platform=rk3576", "quant=w8a8 platform=rk3588",
    ]  # fmt: skip
    (rejected,) = plan.rejected
    assert rejected.overrides == ("quant=w4a16", "platform=rk3588")
    assert "quant.dtype='w4a16' is not supported on platform.name='rk3588'" in rejected.reason
    assert "allowed: w8a8, w8a8_g128, w8a8_g256, w8a8_g512" in rejected.reason
    text = describe(plan)
    assert "3 variant(s) to run" in text and "1 invalid combination(s) skipped" in text
    definition = plan.definition()
    assert definition["rejected"][0]["reason"] == rejected.reason


def test_rkllm_on_host_is_rejected(repo_root):
    plan = plan_sweep(["quant=w8a8,ort_int8"], repo_root / "conf")
    assert [v.overrides for v in plan.variants] == [("quant=ort_int8",)]
    assert "quant.backend=rkllm needs a SoC" in plan.rejected[0].reason


def test_two_spellings_of_one_variant_run_once(repo_root):
    plan = plan_sweep(
        ["quant=ort_int8,ort_int8_per_channel", "quant.ort.per_channel=true"], repo_root / "conf"
    )
    assert len(plan.variants) == 1 and len(plan.duplicates) == 1
    assert plan.duplicates[0][1] == plan.variants[0].variant_id


def test_malformed_override_is_a_config_error(repo_root):
    with pytest.raises(ConfigError, match="cannot expand sweep"):
        expand_overrides(["quant=choice(ort_int8"], repo_root / "conf")
    with pytest.raises(ConfigError, match="does not support sweep type"):
        expand_overrides(["bench.threads=interval(1,4)"], repo_root / "conf")


def test_job_names_are_valid_git_refs_and_args_carry_overrides():
    name = job_name("0123456789abcdef", 3)
    assert name == "sw-01234567-03" and re.fullmatch(r"[a-z0-9-]+", name)
    args = exp_run_args(Job(name, ("quant=ort_int8", "experiment=smoke")))
    assert args == ["--name", name, "-S", "quant=ort_int8", "-S", "experiment=smoke"]


def test_queue_status_parses_dvc_output(monkeypatch, tmp_path):
    table = (
        "Task     Name            Created    Status\n"
        "a05b0b4  sw-01234567-00  09:09 AM   Success\n"
        "76577c0  sw-01234567-01  09:10 AM   Running\n"
        "96577c0  sw-01234567-02  Dec 01     Failed\n"
        "\nWorker status: 1 active, 0 idle\n"
    )

    class Out:
        stdout = table

    monkeypatch.setattr("rkpipe.sweep.executor.dvc", lambda *a, **k: Out())
    assert queue_status(tmp_path) == {
        "sw-01234567-00": "Success", "sw-01234567-01": "Running", "sw-01234567-02": "Failed",
    }  # fmt: skip


def test_objective_parsing():
    assert Objective.parse("ppl_delta_pct:min") == Objective("ppl_delta_pct", "minimize")
    assert Objective.parse("decode_tok_per_s:maximize").direction == "maximize"
    with pytest.raises(ConfigError, match="METRIC:minimize"):
        Objective.parse("ppl")
