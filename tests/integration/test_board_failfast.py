"""A wrong or unreachable board fails in seconds, in one line, before any conversion; and a
benchmark runner dies with the stage that started it (issue 13).

Loopback only: the sshd and adb stand-ins of board_fixture.py / adb_standin.py, a closed port
and a silent listener on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from adb_standin import AdbStandin
from board_fixture import REPO, write_board_root

from rkpipe.board.adb import AdbTransport
from rkpipe.board.deploy import check_board
from rkpipe.board.preflight import quick_check
from rkpipe.board.ssh import SshTransport
from rkpipe.board.transport import LocalTransport
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError

pytestmark = pytest.mark.integration

# The system Python (no rkpipe installed) when there is one: what a board has.
BARE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable
RK3576 = "rockchip,rk3576-evb1-v10\0rockchip,rk3576\0"
QUICK_S = 2.0  # the quick check's bound in these tests
SLACK_S = 3.0  # what a loaded 2-core machine adds to it


# ------------------------------------------------------------------ helpers


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaps counts as dead: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or between open and read
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def wait_for_pid(path: Path, proc: subprocess.Popen | None = None, within: float = 60) -> int:
    """The pid a runner wrote to ``path`` (fails early if ``proc``, its starter, exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text.isdigit():
            return int(text)
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the starter exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"no pid in {path} after {within} s")


def write_pid_then_sleep(pidfile: Path) -> str:
    """A shell "runner" that records its pid, then becomes a long sleep (same pid)."""
    return f"echo $$ > {shlex.quote(str(pidfile))}; exec sleep 300"


def spawn_child(script: str, *args: str) -> subprocess.Popen:
    """A Python child that plays deploy_bench: it starts the runner and is then killed."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO,
    )  # fmt: skip


def kill_and_reap(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    proc.send_signal(signum)
    proc.wait(timeout=30)


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def board_json(board: BoardConfig) -> str:
    return json.dumps(dataclasses.asdict(board))


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for sock in [*held, server]:
        sock.close()


def unreachable_board(port: int, tmp_path: Path) -> BoardConfig:
    return BoardConfig(
        name="ghost", transport="ssh", host="127.0.0.1", port=port,
        known_hosts=str(tmp_path / "known_hosts"), workdir=str(tmp_path / "wd"), timeout_s=60,
    )  # fmt: skip


# ------------------------------------------------------------------ quick_check


def test_quick_check_passes_the_right_board(ssh_board, board_root):
    board = dataclasses.replace(ssh_board, root=str(board_root), platform="rk3588")
    start = time.monotonic()
    facts = quick_check(board, timeout_s=QUICK_S)
    assert time.monotonic() - start < QUICK_S + SLACK_S
    assert facts == {
        "transport": "ssh",
        "soc": "rk3588",
        "compatible": "rockchip,rk3588-evb, rockchip,rk3588",
        "host_key": "known",
    }
    assert quick_check(dataclasses.replace(board, platform=None))["soc"] == "rk3588"


def test_quick_check_of_the_local_board_returns_at_once():
    start = time.monotonic()
    assert quick_check(BoardConfig(), timeout_s=QUICK_S) == {"transport": "local"}
    assert time.monotonic() - start < 0.5


def test_quick_check_refuses_another_soc(ssh_board, tmp_path, loopback_sshd):
    root = write_board_root(tmp_path / "rk3576 root", compatible=RK3576)
    board = dataclasses.replace(ssh_board, name="evb", root=str(root), platform="rk3588")
    with pytest.raises(BoardError) as err:
        quick_check(board, timeout_s=QUICK_S)
    assert one_line_error(err.value) == (
        f"board evb at 127.0.0.1:{loopback_sshd.port} is an rk3576 "
        f"({root}/proc/device-tree/compatible) but its config says platform: rk3588; "
        "fix board.platform or pick the right board"
    )


def test_quick_check_refuses_an_unknown_key_naming_the_command_that_trusts_it(
    loopback_sshd, tmp_path, board_root, monkeypatch, capsys
):
    """The hint names conf/board/rk3588_ssh.yaml (whose name: is rk3588-evb) and the overrides
    that point it at this board; running that very command makes the check pass."""
    known = tmp_path / "known_hosts"
    board = loopback_sshd.board(known, tmp_path / "wd", name="rk3588-evb", root=str(board_root))
    with pytest.raises(BoardError) as err:
        quick_check(board, timeout_s=QUICK_S)
    message = one_line_error(err.value)
    assert message.startswith(f"unknown host key for 127.0.0.1:{loopback_sshd.port}; run `")
    command = message.split("`")[1]
    assert command == shlex.join([
        "rkpipe", "board", "trust", "rk3588_ssh", "board.host=127.0.0.1",
        f"board.port={loopback_sshd.port}", f"board.known_hosts={known}",
    ])  # fmt: skip
    from rkpipe.cli import main

    monkeypatch.chdir(REPO)  # where the CLI composes conf/ from
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    assert quick_check(board, timeout_s=QUICK_S)["host_key"] == "known"


def test_quick_check_refuses_a_changed_key(loopback_sshd, tmp_path, board_root):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key_type, key_b64 = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{loopback_sshd.port} {key_type} {key_b64}\n")
    board = loopback_sshd.board(known, tmp_path / "wd", name="rk3588-evb", root=str(board_root))
    with pytest.raises(BoardError, match="changed") as err:
        quick_check(board, timeout_s=QUICK_S)
    assert "`rkpipe board trust rk3588_ssh board.host=127.0.0.1 " in one_line_error(err.value)


def test_a_closed_port_fails_fast_in_one_line(closed_port, tmp_path, capfd, caplog):
    start = time.monotonic()
    with pytest.raises(BoardError) as err:
        quick_check(unreachable_board(closed_port, tmp_path), timeout_s=QUICK_S)
    assert time.monotonic() - start < QUICK_S + SLACK_S
    assert one_line_error(err.value) == (
        f"cannot connect to 127.0.0.1:{closed_port}: Connection refused; check that the board "
        "is up and that board.port is its SSH port"
    )
    assert "Traceback" not in capfd.readouterr().err + caplog.text


def test_a_silent_listener_fails_within_the_bound_without_a_traceback(
    silent_listener, tmp_path, capfd, caplog
):
    caplog.set_level(logging.DEBUG, logger="rkpipe.board.ssh")
    start = time.monotonic()
    with pytest.raises(BoardError) as err:
        quick_check(unreachable_board(silent_listener, tmp_path), timeout_s=QUICK_S)
    assert time.monotonic() - start < QUICK_S + SLACK_S
    assert one_line_error(err.value) == (
        f"127.0.0.1:{silent_listener} accepted the connection but sent no SSH banner within 2 s: "
        "expected an SSH server there; check board.host and board.port"
    )
    time.sleep(0.5)  # paramiko's transport thread logs its failure on its own schedule
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud and "Traceback" not in capfd.readouterr().err
    detail = [r.getMessage() for r in caplog.records if r.name == "rkpipe.board.ssh"]
    assert any("Error reading SSH protocol banner" in line for line in detail)  # kept at debug


SILENT_CHILD = """
import json, sys, time
from rkpipe.board.preflight import quick_check
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError
try:
    quick_check(BoardConfig(**json.loads(sys.argv[1])), timeout_s=2)
except BoardError as exc:
    print(exc, file=sys.stderr)
time.sleep(0.5)  # let paramiko's thread log, as it did after the error line
"""


def test_a_silent_listener_prints_one_line_outside_pytest(silent_listener, tmp_path):
    """Without pytest's log capture, logging's last resort prints to stderr: one line only."""
    board = unreachable_board(silent_listener, tmp_path)
    child = subprocess.run(
        [sys.executable, "-c", SILENT_CHILD, board_json(board)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert child.stderr.splitlines() == [
        f"127.0.0.1:{silent_listener} accepted the connection but sent no SSH banner within 2 s: "
        "expected an SSH server there; check board.host and board.port"
    ]


# ------------------------------------------------------------------ deploy checks the SoC


def test_deploy_refuses_an_onnxruntime_variant_on_another_soc(
    default_cfg, ssh_board, tmp_path, loopback_sshd
):
    from rkpipe.backends.onnxruntime import RUN_WITH

    root = write_board_root(tmp_path / "rk3576 root", compatible=RK3576)
    models = tmp_path / "models"
    for sub in ("llm/quantized", "asr/quantized"):
        (models / sub).mkdir(parents=True)
    manifest = {"backend": "onnxruntime", "run_with": RUN_WITH.as_dict()}
    (models / "llm/quantized/quant_manifest.json").write_text(json.dumps(manifest))
    board = dataclasses.replace(ssh_board, name="evb", root=str(root), platform="rk3588")
    cfg = dataclasses.replace(
        default_cfg,
        paths=dataclasses.replace(default_cfg.paths, models_dir=str(models)),
        board=board,
    )
    with SshTransport(board) as transport, pytest.raises(BoardError) as err:
        check_board(cfg, transport)
    assert one_line_error(err.value).startswith(
        f"board evb at 127.0.0.1:{loopback_sshd.port} is an rk3576 "
    )


# ------------------------------------------------------------------ runner lifetime: local

LOCAL_CHILD = """
import signal, sys
from rkpipe.board.deploy import run_runner
from rkpipe.board.transport import LocalTransport
def stop(signum, frame):  # what the stage does with SIGTERM (rkpipe.tracking.lifecycle)
    raise SystemExit(128 + signum)
signal.signal(signal.SIGTERM, stop)
run_runner(LocalTransport(), ["sh", "-c", sys.argv[1]], 600)
"""


def test_a_local_runner_dies_when_its_stage_is_sigkilled(tmp_path):
    pidfile = tmp_path / "runner.pid"
    stage = spawn_child(LOCAL_CHILD, write_pid_then_sleep(pidfile))
    runner = wait_for_pid(pidfile, stage)
    assert os.getpgid(runner) == runner  # its own process group
    kill_and_reap(stage)
    assert gone_within(runner, 5), f"runner {runner} outlived its SIGKILLed stage"


def test_a_sigterm_kills_the_local_runner_group_and_reaps_it(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The runner's own child: PR_SET_PDEATHSIG does not reach it, the group kill does.
    script = f"sleep 300 & echo $! > {shlex.quote(str(pidfile))}; wait"
    stage = spawn_child(LOCAL_CHILD, script)
    grandchild = wait_for_pid(pidfile, stage)
    kill_and_reap(stage, signal.SIGTERM)
    assert stage.returncode == 128 + signal.SIGTERM
    assert gone_within(grandchild, 5)


def test_a_local_runner_that_times_out_is_killed_with_its_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {shlex.quote(str(pidfile))}; wait"
    with pytest.raises(BoardError, match="runner timed out after 1 s"):
        LocalTransport().run(["sh", "-c", script], 1)
    assert gone_within(wait_for_pid(pidfile, within=5), 5)


# ------------------------------------------------------------------ runner lifetime: SSH, adb

SSH_CHILD = """
import json, sys
from rkpipe.board.ssh import SshTransport
from rkpipe.config.schema import BoardConfig
with SshTransport(BoardConfig(**json.loads(sys.argv[1])), python=sys.argv[2]) as transport:
    transport.runner_command("rkllm_runner")  # pushes engine_shared.py, the watchdog
    transport.run(transport.watched(["sh", "-c", sys.argv[3]]), 600)
"""


def test_a_remote_runner_dies_when_the_ssh_connection_drops(ssh_board, tmp_path):
    pidfile = tmp_path / "remote runner.pid"
    stage = spawn_child(
        SSH_CHILD, board_json(ssh_board), BARE_PYTHON, write_pid_then_sleep(pidfile)
    )
    runner = wait_for_pid(pidfile, stage)
    assert os.getpgid(runner) == runner  # the watchdog started it in its own group
    kill_and_reap(stage)  # our end of the connection dies without a word
    assert gone_within(runner, 5), f"remote runner {runner} outlived the SSH connection"


def test_a_remote_runner_that_times_out_is_killed(ssh_board, tmp_path):
    pidfile = tmp_path / "runner.pid"
    with SshTransport(ssh_board, python=BARE_PYTHON) as transport:
        transport.runner_command("rkllm_runner")
        with pytest.raises(BoardError, match="timed out after"):
            transport.run(transport.watched(["sh", "-c", write_pid_then_sleep(pidfile)]), 2)
        assert gone_within(wait_for_pid(pidfile, within=5), 5)
        result = transport.run(transport.watched(["sh", "-c", "echo ok; exit 3"]), 30)
    assert (result.returncode, result.stdout) == (3, "ok\n")  # passed through the watchdog


ADB_CHILD = """
import json, sys
from rkpipe.board.adb import AdbTransport
from rkpipe.config.schema import BoardConfig
board = BoardConfig(**json.loads(sys.argv[1]))
transport = AdbTransport(board, python=sys.argv[2], server_host="127.0.0.1",
                         server_port=int(sys.argv[3]))
transport.runner_command("rkllm_runner")
transport.run(transport.watched(["sh", "-c", sys.argv[4]]), 600)
"""


def test_a_remote_runner_dies_when_the_adb_connection_drops(tmp_path):
    board = BoardConfig(
        name="adb", transport="adb", host="standin-board", workdir=str(tmp_path / "wd"),
        timeout_s=30,
    )  # fmt: skip
    pidfile = tmp_path / "runner.pid"
    with AdbStandin() as standin:
        stage = spawn_child(
            ADB_CHILD, board_json(board), BARE_PYTHON, str(standin.port),
            write_pid_then_sleep(pidfile),
        )  # fmt: skip
        runner = wait_for_pid(pidfile, stage)
        kill_and_reap(stage)
        assert gone_within(runner, 5), f"runner {runner} outlived the adb connection"


def test_the_adb_transport_runs_watched_commands(tmp_path):
    board = BoardConfig(name="adb", transport="adb", host="standin-board",
                        workdir=str(tmp_path / "wd"), timeout_s=30)  # fmt: skip
    with AdbStandin() as standin:
        transport = AdbTransport(
            board, python=BARE_PYTHON, server_host="127.0.0.1", server_port=standin.port
        )
        transport.runner_command("rkllm_runner")
        result = transport.run(transport.watched(["sh", "-c", "echo ok; exit 3"]), 30)
    assert (result.returncode, result.stdout) == (3, "ok\n")
