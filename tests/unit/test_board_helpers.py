"""Pure helpers of the board modules: parsing, checks and plans (no board, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkpipe.board.clocks import plan_frequency_writes
from rkpipe.board.host_keys import known_hosts_name
from rkpipe.board.preflight import (
    check_board_platform,
    check_facts,
    parse_df_available_mb,
    parse_driver_version,
    parse_mem_available_mb,
    soc_from_compatible,
)
from rkpipe.board.ssh import parse_sha256sum
from rkpipe.board.trust_hint import trust_command
from rkpipe.config.schema import BoardConfig
from rkpipe.engines.rkllm_runner import default_cpu_mask
from rkpipe.errors import BoardError

DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("compatible", "soc"),
    [
        ("rockchip,rk3588-evb\0rockchip,rk3588\0", "rk3588"),
        ("xunlong,orangepi-5\0rockchip,rk3588s\0", "rk3588"),
        ("rockchip,rk3576-evb1-v10\0rockchip,rk3576\0", "rk3576"),
        ("rockchip,rv1126b-evb\0rockchip,rv1126b\0", "rv1126b"),
        ("raspberrypi,4-model-b\0brcm,bcm2711\0", None),
        ("", None),
    ],
)
def test_soc_from_compatible(compatible, soc):
    assert soc_from_compatible(compatible) == soc


def test_parsers():
    assert parse_driver_version("RKNPU driver: v0.9.8\n") == "0.9.8"
    assert parse_driver_version("no version") is None
    df = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 100 10 2048 1% /\n"
    assert parse_df_available_mb(df) == pytest.approx(2048 * 1024 / 1e6)
    with pytest.raises(BoardError, match="df -Pk"):
        parse_df_available_mb("df: /nope: No such file or directory\n")
    assert parse_mem_available_mb("MemTotal: 9 kB\nMemAvailable:  1000 kB\n") == 1.024
    with pytest.raises(BoardError, match="MemAvailable"):
        parse_mem_available_mb("MemTotal: 9 kB\n")
    assert parse_sha256sum(f"\\{DIGEST}  odd\\nname\n") == DIGEST
    assert parse_sha256sum(f"{DIGEST}  -\n") == DIGEST
    assert parse_sha256sum("-") is None and parse_sha256sum("") is None
    assert known_hosts_name("board", 22) == "board"
    assert known_hosts_name("10.0.0.2", 2222) == "[10.0.0.2]:2222"


def facts(**changes):
    base = {
        "soc": "rk3588",
        "compatible": "rockchip,rk3588",
        "driver_version": "0.9.8",
        "runtime_version": "1.3.0",
        "runtime_lib": "/usr/lib/librkllmrt.so",
        "free_disk_mb": 10_000.0,
        "mem_available_mb": 8_000.0,
        "workdir": "/tmp/w",
    }
    return base | changes


def test_check_facts_passes_and_lists_every_problem():
    ok = check_facts(facts(), model_platform="RK3588", toolkit_version="1.3.0", model_size_mb=900)
    assert ok == []
    bad = facts(soc=None, driver_version="0.9.6", runtime_version="1.2.1", free_disk_mb=10.0)
    problems = check_facts(
        bad | {"mem_available_mb": 100.0},
        model_platform="rk3576",
        toolkit_version="v1.3.0",
        model_size_mb=900,
    )
    assert len(problems) == 5
    assert problems[0].startswith("model built for rk3576 but board is not a known Rockchip SoC")
    assert "upgrade the runtime to 1.3.0 (rknn-llm #129, #534)" in problems[2]


def test_check_facts_newer_runtime_and_skipped_checks():
    (problem,) = check_facts(
        facts(runtime_version="1.3.0"),
        model_platform=None,
        toolkit_version="1.2.3",
        model_size_mb=1,
    )
    assert "re-export the model with rkllm-toolkit 1.3.0" in problem
    onnx = facts(soc=None, driver_version=None, runtime_version=None)
    assert check_facts(onnx, model_platform=None, toolkit_version=None, model_size_mb=1) == []


def test_plan_frequency_writes():
    readings = {
        "/sys/devices/system/cpu/cpu0/cpuidle/state1/disable": "0",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies": "408000 2016000",
        "/sys/class/devfreq/ff300000.npu/available_frequencies": "300000000 1000000000",
    }
    plan = plan_frequency_writes("RK3562", readings)
    assert plan == {
        "/sys/devices/system/cpu/cpu0/cpuidle/state1/disable": "1",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor": "userspace",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_setspeed": "2016000",
        "/sys/kernel/debug/rknpu/freq": "1000000000",  # rk3562's NPU: no governor file
    }
    with pytest.raises(BoardError, match="no frequency table for 'rk9999'"):
        plan_frequency_writes("rk9999", readings)


def test_default_cpu_mask_takes_the_big_cores():
    assert default_cpu_mask(4, 8) == 0xF0
    assert default_cpu_mask(2, 8) == 0xC0
    assert default_cpu_mask(8, 4) == 0x0F


# ------------------------------------------------------------------ board.platform


def evb(**changes) -> BoardConfig:
    fields = dict(name="evb", transport="ssh", host="10.9.8.7", port=2222, platform="rk3588")
    return BoardConfig(**(fields | changes))  # fmt: skip


def test_check_board_platform():
    check_board_platform(evb(), "rk3588", "rockchip,rk3588")
    check_board_platform(evb(platform="RK3588S"), "rk3588", "rockchip,rk3588s")  # same NPU
    check_board_platform(evb(platform=None), "rk3576", "rockchip,rk3576")  # nothing to check
    with pytest.raises(BoardError) as err:
        check_board_platform(evb(root="/fake/"), "rk3576", "rockchip,rk3576")
    assert str(err.value) == (
        "board evb at 10.9.8.7:2222 is an rk3576 (/fake/proc/device-tree/compatible) but its "
        "config says platform: rk3588; fix board.platform or pick the right board"
    )
    with pytest.raises(BoardError, match=r"at adb device X1 is not a known Rockchip SoC \(empty\)"):
        check_board_platform(evb(transport="adb", host="X1"), None, "")


# ------------------------------------------------------------------ the trust hint


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config dir whose board group has an ssh board, an adb board and a nested option."""
    group = tmp_path / "conf" / "board"
    (group / "lab").mkdir(parents=True)
    (group / "evb_ssh.yaml").write_text(
        "name: evb\ntransport: ssh\nhost: 10.9.8.7\nport: 2222\nknown_hosts: ~/.ssh/known_hosts\n"
    )
    (group / "lab" / "second.yaml").write_text("name: second\ntransport: ssh\nhost: 10.9.8.8\n")
    (group / "phone.yaml").write_text("name: phone\ntransport: adb\n")
    (group / "broken.yaml").write_text("name: [unclosed\n")
    return tmp_path / "conf"


def test_the_trust_hint_names_the_config_option_not_the_board_name(conf):
    assert trust_command(evb(), conf) == "rkpipe board trust evb_ssh"
    assert trust_command(evb(name="second", host="10.9.8.8", port=22), conf) == (
        "rkpipe board trust lab/second"
    )


def test_the_trust_hint_repeats_what_differs_from_the_file(conf):
    board = evb(host="127.0.0.1", known_hosts="/tmp/a b/known_hosts")
    assert trust_command(board, conf) == (
        "rkpipe board trust evb_ssh board.host=127.0.0.1 "
        """'board.known_hosts='"'"'/tmp/a b/known_hosts'"'"''"""
    )
    assert trust_command(evb(known_hosts=None), conf) == "rkpipe board trust evb_ssh"  # same file


def test_the_trust_hint_without_a_file_of_that_name(conf, tmp_path):
    # another ssh option, pointed at this board, trusts it just as well
    assert trust_command(evb(name="loopback", port=22), conf) == (
        "rkpipe board trust evb_ssh board.port=22"  # fewest overrides, then alphabetical
    )
    assert trust_command(evb(name="loopback", host="10.9.8.8", port=22), conf) == (
        "rkpipe board trust lab/second"
    )
    assert (
        trust_command(evb(name="loopback"), tmp_path / "nowhere") == "rkpipe board trust loopback"
    )
