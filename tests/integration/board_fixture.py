"""A loopback board: Debian's OpenSSH server on 127.0.0.1 and a fake board root directory.

The server runs as the current user on a free port with its own host key and one authorised
test key (both made by ssh-keygen in a temp dir), ``StrictModes no`` and ``UsePAM no``; its
privilege-separation directory ``/run/sshd`` is created when running as root. The board root
holds ``proc/device-tree/compatible``, ``proc/meminfo``, ``sys/kernel/debug/rknpu/version`` and
a fake sysfs for frequency pinning, which preflight reads through its ``board_root`` prefix.

``tests/integration/conftest.py`` re-exports the fixtures; ``start_sshd`` / ``stop_sshd`` also
serve ``benchmarks/board_harness.py``.
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rkpipe.config.schema import BoardConfig

REPO = Path(__file__).resolve().parents[2]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SOC_CPUS = {"rk3588": (0, 4, 6), "rk3576": (0, 4), "rk3562": (0,), "rv1126b": (0,)}

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
AllowUsers {user}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
"""


@dataclass
class LoopbackSshd:
    """A running sshd on 127.0.0.1 and the files a client needs to reach it."""

    port: int
    user: str
    key_file: Path
    host_key_pub: Path
    dir: Path
    process: subprocess.Popen

    host = "127.0.0.1"

    def known_hosts_line(self) -> str:
        """The known_hosts line trust_host should write for this server."""
        key_type, key_b64 = self.host_key_pub.read_text().split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key_b64}\n"

    def board(self, known_hosts: Path, workdir: Path, **overrides) -> BoardConfig:
        """A BoardConfig reaching this server (``transport: ssh``)."""
        fields = dict(
            name="loopback", transport="ssh", host=self.host, port=self.port, user=self.user,
            key_file=str(self.key_file), known_hosts=str(known_hosts), workdir=str(workdir),
            timeout_s=60.0,
        )  # fmt: skip
        return BoardConfig(**(fields | overrides))

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes (all descendants of the listener)."""
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                children = [int(c) for c in task.read_text().split()]
                found += children
                todo += children
        return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rkpipe-test", "-f", str(path)],
        check=True,
    )


def _wait_for_banner(port: int, process: subprocess.Popen, log: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on port {port}: {log.read_text()}")


def start_sshd(directory: Path) -> LoopbackSshd:
    """Generate keys and a config in ``directory`` and start ``sshd -D`` on a free port.

    Raises RuntimeError when sshd is missing or does not come up.
    """
    if not Path(SSHD).is_file():
        raise RuntimeError("sshd not found: apt-get install openssh-server")
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    _keygen(directory / "host_ed25519_key")
    _keygen(directory / "client_key")
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    port, user = _free_port(), getpass.getuser()
    config = directory / "sshd_config"
    config.write_text(SSHD_CONFIG.format(port=port, dir=directory, user=user))
    log = directory / "sshd.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=handle)
    _wait_for_banner(port, process, log)
    pub = directory / "host_ed25519_key.pub"
    return LoopbackSshd(port, user, directory / "client_key", pub, directory, process)


def stop_sshd(sshd: LoopbackSshd) -> None:
    """Stop the listener (by its pid) and wait for it."""
    sshd.process.terminate()
    try:
        sshd.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sshd.process.kill()
        sshd.process.wait()


def write_board_root(
    root: Path,
    *,
    compatible: str = "rockchip,rk3588-evb\0rockchip,rk3588\0",
    driver: str = "RKNPU driver: v0.9.8\n",
    mem_available_kb: int = 8_000_000,
) -> Path:
    """Write the files preflight reads under ``root`` (as a board has them under /)."""
    files = {
        "proc/device-tree/compatible": compatible,
        "sys/kernel/debug/rknpu/version": driver,
        "proc/meminfo": f"MemTotal: 16000000 kB\nMemAvailable: {mem_available_kb} kB\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def write_fake_sysfs(root: Path, soc: str = "rk3588", npu: str = "fdab0000.npu") -> None:
    """A sysfs with the frequency files Rockchip's fix_freq_<soc>.sh scripts write."""
    cpu = root / "sys/devices/system/cpu"
    for n in range(8):
        _put(cpu / f"cpu{n}/cpuidle/state1/disable", "0")
    for policy in SOC_CPUS[soc]:
        base = cpu / f"cpufreq/policy{policy}"
        _put(base / "scaling_available_frequencies", "408000 1200000 1800000 \n")
        _put(base / "scaling_governor", "schedutil")
        _put(base / "scaling_setspeed", "<unsupported>")
    for dev in (npu, "dmc"):
        base = root / "sys/class/devfreq" / dev
        _put(base / "available_frequencies", "300000000 1000000000 600000000\n")
        _put(base / "governor", "simple_ondemand")
        _put(base / "userspace/set_freq", "0")


def _put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def load_fake_runtime_builder():
    """``tests/contract/fake_runtime/build.py`` as a module (it is not a package)."""
    path = REPO / "tests" / "contract" / "fake_runtime" / "build.py"
    spec = importlib.util.spec_from_file_location("fake_runtime_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def loopback_sshd(tmp_path_factory: pytest.TempPathFactory):
    """A running loopback sshd for the whole session (skips when sshd is not installed)."""
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip("needs Debian's openssh-server (scripts/setup.sh installs it)")
    sshd = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield sshd
    stop_sshd(sshd)


@pytest.fixture
def trusted_known_hosts(loopback_sshd: LoopbackSshd, tmp_path: Path) -> Path:
    """A known_hosts file that already holds the loopback server's key."""
    path = tmp_path / "known_hosts"
    path.write_text(loopback_sshd.known_hosts_line())
    return path


@pytest.fixture
def ssh_board(
    loopback_sshd: LoopbackSshd, trusted_known_hosts: Path, tmp_path: Path
) -> BoardConfig:
    """A trusted loopback board with its own workdir."""
    return loopback_sshd.board(trusted_known_hosts, tmp_path / "board workdir")


@pytest.fixture
def board_root(tmp_path: Path) -> Path:
    """A fake board root (rk3588, driver 0.9.8, 8 GB available)."""
    return write_board_root(tmp_path / "board root")
