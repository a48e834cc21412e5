"""Host and board fingerprints: what they hold, that they are stable, and that they change
with the machine (a flag, a core type, a governor) and nothing else."""

from __future__ import annotations

import dataclasses
import datetime

import pytest

from rkpipe.board.fingerprint import board_clocks, board_fingerprint, remote_board_fingerprint
from rkpipe.board.transport import LocalTransport
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError
from rkpipe.hostinfo import (
    CPUINFO_ENV,
    FingerprintError,
    canonical_json,
    fingerprint_id,
    has_vnni,
    host_fingerprint,
    isa_warnings,
    load_fingerprint,
    memory_total_gb,
    parse_cpuinfo,
    provenance,
    write_fingerprint,
)

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx2 fma f16c
"""
RK3588 = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd05
processor\t: 4
Features\t: fp asimd evtstrm aes crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""


def test_cpuinfo_keeps_the_kernel_flags_and_the_model():
    xeon = parse_cpuinfo(XEON, "x86_64")
    assert xeon["model"] == "Intel(R) Xeon(R) Processor"
    assert xeon["isa"] == sorted(["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                  "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"])  # fmt: skip
    assert "fpu" not in xeon["isa"] and "sse2" not in xeon["isa"]
    arm = parse_cpuinfo(RK3588, "aarch64")
    assert arm["model"] == "Cortex-A55 + Cortex-A76"
    assert arm["isa"] == ["dotprod", "fp16", "neon"]


def test_vnni_and_the_warnings_name_the_flag_and_the_consequence():
    xeon = {"cpu": parse_cpuinfo(XEON, "x86_64")}
    epyc = {"cpu": parse_cpuinfo(EPYC, "x86_64")}
    assert has_vnni(xeon) and not has_vnni(epyc)
    assert isa_warnings(xeon) == []
    (warning,) = isa_warnings(epyc)
    assert "no avx512_vnni/avx_vnni/amx_int8" in warning and "saturating" in warning
    assert "reduce_range" in warning
    assert has_vnni({"cpu": parse_cpuinfo(RK3588, "aarch64")})  # not an x86 question
    no_dot = {"cpu": {"arch": "aarch64", "isa": ["neon"]}}
    assert "no dotprod" in isa_warnings(no_dot)[0]


def test_fingerprint_is_stable_and_changes_with_a_flag(tmp_path, monkeypatch):
    xeon, epyc = tmp_path / "xeon", tmp_path / "epyc"
    xeon.write_text(XEON)
    epyc.write_text(EPYC)
    monkeypatch.setenv(CPUINFO_ENV, str(xeon))
    first = write_fingerprint(tmp_path / "a.json", host_fingerprint(2))
    again = write_fingerprint(tmp_path / "b.json", host_fingerprint(2))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert load_fingerprint(tmp_path / "a.json") == first == again
    # machine facts only: no timestamps, no load, no free memory
    assert set(first) == {"schema", "kind", "cpu", "memory_total_gb", "threads", "versions", "id"}
    assert first["versions"]["onnxruntime"] != "not installed"
    # threads are recorded but do not make it another machine
    assert fingerprint_id(host_fingerprint(4)) == first["id"]
    monkeypatch.setenv(CPUINFO_ENV, str(epyc))
    other = host_fingerprint(2)
    assert fingerprint_id(other) != first["id"]
    assert other["cpu"]["model"] == "AMD EPYC 7B12" and "avx512_vnni" not in other["cpu"]["isa"]


def test_unreadable_fingerprints_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(FingerprintError, match="does not exist; run the host_fingerprint stage"):
        load_fingerprint(tmp_path / "host.json")
    (tmp_path / "host.json").write_text("{trunc")
    with pytest.raises(FingerprintError, match="cannot be read"):
        load_fingerprint(tmp_path / "host.json")
    (tmp_path / "host.json").write_text("{}")
    with pytest.raises(FingerprintError, match="no fingerprint id"):
        load_fingerprint(tmp_path / "host.json")
    monkeypatch.setenv(CPUINFO_ENV, str(tmp_path / "absent"))
    with pytest.raises(FingerprintError, match="cannot read the CPU facts"):
        host_fingerprint(2)


def test_canonical_json_and_memory():
    assert canonical_json({"b": 1, "a": [2]}) == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    assert memory_total_gb("MemTotal:       24620236 kB\n") == 23.5
    assert memory_total_gb("nothing") is None


def test_provenance_names_host_board_cpu_and_time():
    host = {"id": "h1", "cpu": {"model": "Xeon", "isa": ["avx2", "amx_int8"]}}
    board = {"id": "b1", "cpu": {"model": "Cortex-A55 + Cortex-A76", "isa": ["dotprod"]}}
    when = datetime.datetime(2026, 12, 7, 5, 0, 1, 500, tzinfo=datetime.timezone.utc)
    local = provenance(host, "host", None, when)
    assert local == {"host_id": "h1", "board": "host", "board_id": "", "cpu": "Xeon",
                     "isa": "avx2 amx_int8", "measured_at": "2026-12-07T05:00:01+00:00"}  # fmt: skip
    remote = provenance(host, "rk3588-evb", board, when)
    assert remote["cpu"] == "Cortex-A55 + Cortex-A76" and remote["board_id"] == "b1"
    local_board = {"id": "l1", "kind": "board", "transport": "local", "host_id": "h1"}
    assert provenance(host, "local", local_board, when)["board_id"] == ""  # the host itself


def test_clocks_record_what_the_benchmark_runs_at():
    readings = {
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_governor": "ondemand\n",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq": "816000\n",
        "/sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies": "408000 1800000",
        "/sys/class/devfreq/fdab0000.npu/governor": "userspace\n",
        "/sys/class/devfreq/fdab0000.npu/cur_freq": "1000000000\n",
        "/sys/class/devfreq/fdab0000.npu/available_frequencies": "300000000 1000000000",
    }
    clocks = board_clocks(readings, "rk3588", pinned=False)
    # a scaling governor: the range, not the momentary frequency (which changes every read)
    assert clocks["cpu_policy0"] == {"governor": "ondemand", "range": [408000, 1800000]}
    assert clocks["npu"] == {"governor": "userspace", "freq": "1000000000"}
    pinned = board_clocks(readings, "rk3588", pinned=True)
    assert pinned["cpu_policy0"] == {"governor": "userspace (pinned by rkpipe)", "freq": 1800000}
    changed = readings | {"/sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq": "1800000"}
    assert board_clocks(changed, "rk3588", pinned=False) == clocks


def write_board(root, soc="rk3588"):
    files = {
        "proc/device-tree/compatible": f"rockchip,{soc}-evb\0rockchip,{soc}\0",
        "proc/cpuinfo": RK3588,
        "proc/meminfo": "MemTotal:        8012345 kB\n",
        "sys/module/rknpu/version": "RKNPU driver: v0.9.8\n",
        "sys/class/devfreq/fdab0000.npu/governor": "rknpu_ondemand",
        "sys/class/devfreq/fdab0000.npu/available_frequencies": "300000000 1000000000",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_remote_board_fingerprint_reads_soc_driver_cpu_clocks_and_runtime(tmp_path):
    root = write_board(tmp_path / "board")
    lib = tmp_path / "librkllmrt.so"
    lib.write_bytes(b"\x7fELF runtime 1.2.3")
    board = BoardConfig(name="evb", transport="ssh", host="127.0.0.1", root=str(root),
                        rkllm_lib=str(lib))  # fmt: skip
    facts = remote_board_fingerprint(board, LocalTransport(), threads=4)
    assert facts["soc"] == "rk3588" and facts["npu_driver"] == "0.9.8"
    assert facts["cpu"]["model"] == "Cortex-A55 + Cortex-A76" and "dotprod" in facts["cpu"]["isa"]
    assert facts["memory_total_gb"] == 7.5 and facts["threads"] == 4
    assert facts["clocks"]["npu"] == {
        "governor": "rknpu_ondemand",
        "range": [300000000, 1000000000],
    }
    assert len(facts["runtime_lib"]["sha256"]) == 64
    assert fingerprint_id(facts) == fingerprint_id(
        remote_board_fingerprint(board, LocalTransport(), 4)
    )
    lib.write_bytes(b"\x7fELF runtime 1.2.4")  # another runtime build: another board state
    assert fingerprint_id(facts) != fingerprint_id(
        remote_board_fingerprint(board, LocalTransport(), 4)
    )


def test_a_board_without_facts_answers_no_fingerprint(tmp_path, monkeypatch):
    board = BoardConfig(name="evb", transport="ssh", host="127.0.0.1", root=str(tmp_path / "empty"))
    with pytest.raises(BoardError, match="answered no fingerprint"):
        remote_board_fingerprint(board, LocalTransport(), threads=2)
    monkeypatch.setattr("rkpipe.board.fingerprint.make_transport", lambda b: LocalTransport())
    facts = board_fingerprint(board, {"id": "h1"}, 2)  # recorded: deploy_bench stops on it
    assert "answered no fingerprint" in facts["error"]
    host = {"id": "h1", "versions": {"onnxruntime": "1.32.0"}}
    local = board_fingerprint(dataclasses.replace(board, transport="local"), host, 2)
    assert local["host_id"] == "h1" and "error" not in local
    # an upgraded onnxruntime on the host changes what deploy_bench depends on
    upgraded = board_fingerprint(dataclasses.replace(board, transport="local"),
                                 host | {"versions": {"onnxruntime": "1.33.0"}}, 2)  # fmt: skip
    assert upgraded != local
