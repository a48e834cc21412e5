"""Reach a board through an adb server (adbutils): Android boards and Rockchip Linux images
that ship adbd.

Same surface as :class:`rkpipe.board.ssh.SshTransport` (it shares
:class:`~rkpipe.board.ssh.RemoteTransport`): every argument shell-quoted, a deadline on every
call, content-addressed pushes verified with the device's ``sha256sum`` and renamed into place
with ``mv``. ``board.host`` is the device serial as ``adb devices`` lists it (a USB serial or
``192.168.1.50:5555``); unset means the only device attached. ``board.port`` is not used: the
adb server's address comes from the constructor (default 127.0.0.1:5037, or
``ANDROID_ADB_SERVER_HOST`` / ``ANDROID_ADB_SERVER_PORT``).

Commands run through adbutils' ``shell2``: on the ``shell,v2:`` service when the device lists
the ``shell_v2`` feature (separate stderr, real exit code), otherwise on ``shell:``, where stderr
is mixed into stdout and adbutils echoes the exit code. Its timeout bounds each read from the
device, so a silent command is cut off after ``timeout``; the runners print their results at
the end, so for them that is the call's deadline.

Files go through the ``sync:`` service's SEND request, written here: adbutils' ``push`` opens
its connection with no timeout at all, so a device that stops reading would hang the stage.
Unlike SFTP, SEND cannot append, so an interrupted push starts over.
"""

from __future__ import annotations

import logging
import stat
import struct
import subprocess
import time
from pathlib import Path

import adbutils
from adbutils import AdbConnection, AdbDevice, AdbError, AdbTimeout

from rkpipe.board.ssh import RemoteTransport
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError
from rkpipe.progress import transfer

log = logging.getLogger(__name__)

SYNC_CHUNK = 64 * 1024  # the sync protocol's maximum DATA payload


class AdbTransport(RemoteTransport):
    """A board reached through adb; see the module docstring.

    Args:
        board: ``host`` (device serial), ``workdir``, ``timeout_s``.
        python: the board's Python for the runners.
        server_host, server_port: the adb server (adbutils' defaults when None).
    """

    def __init__(
        self,
        board: BoardConfig,
        python: str = "python3",
        server_host: str | None = None,
        server_port: int | None = None,
    ) -> None:
        super().__init__(board, python)
        self._client = adbutils.AdbClient(host=server_host, port=server_port)
        self._device_handle: AdbDevice | None = None
        self._shell_v2: bool | None = None

    def __enter__(self) -> AdbTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the device (each command opens its own adb connection)."""
        self._device_handle = None
        self._shell_v2 = None

    def _device(self) -> AdbDevice:
        if self._device_handle is None:
            try:
                self._device_handle = self._client.device(self.board.host or None)
                features = self._device_handle.get_features()
            except (AdbError, OSError) as exc:
                raise BoardError(self._unreachable(exc)) from None
            self._shell_v2 = "shell_v2" in features.split(",")
        return self._device_handle

    def _unreachable(self, exc: BaseException) -> str:
        where = f"{self._client.host}:{self._client.port}"
        serial = self.board.host or "(the only device)"
        return f"adb device {serial} via the adb server at {where} is not reachable: {exc}"

    def _exec(
        self, command: str, timeout: float, hold_stdin: bool = False
    ) -> subprocess.CompletedProcess[str]:
        # stdin is never closed from this side, so hold_stdin needs nothing: it reads EOF when
        # the adb socket closes, and adbd also sends SIGHUP then (the watchdog handles both).
        device = self._device()
        try:
            result = device.shell2(command, timeout=timeout, v2=bool(self._shell_v2))
        except AdbTimeout:
            raise BoardError(
                f"timed out after {timeout:.0f} s on adb device: {command[:200]}"
            ) from None
        except (AdbError, OSError, EOFError) as exc:
            self.close()
            raise BoardError(self._unreachable(exc)) from None
        if not self._shell_v2:  # shell: mixes stderr into the one output stream
            return subprocess.CompletedProcess(command, result.returncode, result.output, "")
        return subprocess.CompletedProcess(command, result.returncode, result.stdout, result.stderr)

    def _upload(self, local: Path, remote: str) -> None:
        """``sync:`` SEND of ``local`` to ``remote`` (mode 0644), every step with a timeout."""
        device = self._device()
        try:
            conn = device.open_transport(timeout=self.board.timeout_s)
            try:
                _sync_send(conn, local, remote)
            finally:
                conn.close()
        except (AdbError, OSError, EOFError) as exc:
            self.close()
            raise BoardError(f"push of {local.name} over adb failed: {exc}; push again") from None


def _sync_send(conn: AdbConnection, local: Path, remote: str) -> None:
    """``sync:`` SEND: "SEND" + len + "path,mode", DATA chunks, "DONE" + mtime, then OKAY."""
    conn.send_command("sync:")
    conn.check_okay()
    target = f"{remote},{stat.S_IFREG | 0o644}".encode()
    sock, size = conn.conn, local.stat().st_size
    sock.sendall(b"SEND" + struct.pack("<I", len(target)) + target)
    done = 0
    with local.open("rb") as src, transfer(f"pushing {local.name} over adb", size) as shown:
        while chunk := src.read(SYNC_CHUNK):
            sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
            done += len(chunk)
            shown(done)
    sock.sendall(b"DONE" + struct.pack("<I", int(time.time())))
    status = conn.read_exact(4)
    if status != b"OKAY":
        length = struct.unpack("<I", conn.read_exact(4))[0]
        message = conn.read_exact(length).decode("utf-8", "replace")
        raise AdbError(f"device refused {remote}: {status.decode(errors='replace')} {message}")
    sock.sendall(b"QUIT" + struct.pack("<I", 0))
