"""AdbTransport (adbutils) against the adb server stand-in in ``adb_standin.py``."""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
from adb_standin import AdbStandin, StandinState
from board_fixture import load_fake_runtime_builder

from rkpipe.board.adb import AdbTransport
from rkpipe.board.deploy import parse_json_lines
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError

pytestmark = pytest.mark.integration

HOSTILE_NAMES = ["a b.txt", "it's.txt", "$(touch PWNED).txt", ";rm -rf x.txt", "-rf", "new\nline"]


@pytest.fixture(params=[True, False], ids=["shell_v2", "shell_v1"])
def standin(request):
    with AdbStandin(StandinState(shell_v2=request.param)) as server:
        yield server


def make_transport(standin: AdbStandin, workdir: Path, serial: str | None = "standin-board"):
    board = BoardConfig(
        name="adb", transport="adb", host=serial, workdir=str(workdir), timeout_s=30
    )
    return AdbTransport(
        board, python=sys.executable, server_host="127.0.0.1", server_port=standin.port
    )


def test_run_quotes_arguments_and_reports_exit_codes(standin, tmp_path):
    args = ["$(id)", "a b", "'q'", '"dq"', ";rm -rf x", "`id`", "*", "new\nline"]
    with make_transport(standin, tmp_path / "wd") as transport:
        out = transport.run(["printf", "%s\\0", *args], 10)
        assert out.returncode == 0 and out.stdout.split("\0")[:-1] == args
        result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert result.returncode == 3
    if standin.state.shell_v2:
        assert (result.stdout, result.stderr) == ("out\n", "err\n")
    else:  # the legacy service mixes the streams
        assert sorted(result.stdout.split()) == ["err", "out"] and result.stderr == ""


def test_run_times_out(standin, tmp_path):
    with make_transport(standin, tmp_path / "wd") as transport:
        start = time.monotonic()
        with pytest.raises(BoardError, match="timed out after"):
            transport.run(["sleep", "5"], 0.5)
        assert time.monotonic() - start < 3
        assert transport.run(["echo", "ok"], 10).stdout == "ok\n"


def test_push_hostile_names_verifies_and_skips(standin, tmp_path):
    local = tmp_path / "model dir"
    local.mkdir()
    for i, name in enumerate(HOSTILE_NAMES):
        (local / name).write_bytes(os.urandom(100_000 + i))
    with make_transport(standin, tmp_path / "board wd") as transport:
        remote = transport.push(local)
        for name in HOSTILE_NAMES:
            digest = hashlib.sha256((local / name).read_bytes()).hexdigest()
            assert transport.remote_sha256(f"{remote}/{name}") == digest
        sends = len(standin.state.sends)
        assert sends == len(HOSTILE_NAMES)
        assert all("/.partial/" in path for path in standin.state.sends)  # temp name, then mv
        transport.push(local)
        assert len(standin.state.sends) == sends  # content-addressed: nothing re-sent
    assert sorted(p.name for p in Path(remote).iterdir()) == sorted(HOSTILE_NAMES)
    assert not list(tmp_path.rglob("PWNED*"))


def test_corrupted_push_is_detected_and_removed(standin, tmp_path):
    standin.state.corrupt_pushes = True
    local = tmp_path / "weights.bin"
    local.write_bytes(b"x" * 1000)
    with make_transport(standin, tmp_path / "wd") as transport:
        with pytest.raises(BoardError, match="arrived corrupted"):
            transport.push(local)
    assert not list((tmp_path / "wd" / ".partial").iterdir())


def test_unknown_device_is_reported(standin, tmp_path):
    with make_transport(standin, tmp_path / "wd", serial="not-there") as transport:
        with pytest.raises(BoardError, match="adb device not-there .* not reachable"):
            transport.run(["true"], 5)


def test_rkllm_runner_runs_over_adb(standin, tmp_path):
    lib = load_fake_runtime_builder().build_fake_runtime(tmp_path / "rt", "1.3")
    model = tmp_path / "tiny.rkllm"
    model.write_bytes(b"fake")
    with make_transport(standin, tmp_path / "wd") as transport:
        argv = ["env", "FAKE_PREFILL_MS=100", "FAKE_DECODE_MS_PER_TOKEN=10"]
        argv += transport.runner_command("rkllm_runner")
        argv += ["--lib", str(lib), "--model", transport.model_path(model)]
        argv += [
            "--prompt-tokens",
            "8",
            "--new-tokens",
            "11",
            "--warmup",
            "1",
            "--repetitions",
            "2",
        ]
        result = transport.run(argv, 60)
    assert result.returncode == 0, result.stderr
    rows = parse_json_lines(result.stdout)
    assert [r["abi"] for r in rows] == ["1.3"] * 3
    # A plumbing check (the 1 % precision target is the contract tests' job, on longer runs).
    assert statistics.median(r["decode_tok_per_s"] for r in rows) == pytest.approx(100, rel=0.05)


def test_identical_files_of_one_name_in_one_push(standin, tmp_path):
    """Same name, same bytes, two places: each gets its own partial file."""
    local = tmp_path / "model"
    for sub in ("x", "y"):
        (local / sub).mkdir(parents=True)
        (local / sub / "same.bin").write_bytes(b"identical")
    with make_transport(standin, tmp_path / "wd") as transport:
        remote = Path(transport.push(local))
    assert (remote / "x" / "same.bin").read_bytes() == (remote / "y" / "same.bin").read_bytes()
