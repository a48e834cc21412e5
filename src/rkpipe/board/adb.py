"""Reach a board through an adb server (adbutils): Android boards and Rockchip Linux images
that ship adbd.

Same surface as :class:`rkpipe.board.ssh.SshTransport` (it shares
:class:`~rkpipe.board.ssh.RemoteTransport`): every argument shell-quoted, a deadline on every
call, content-addressed pushes verified with the device's ``sha256sum`` and renamed into place
with ``mv``. ``board.host`` is the device serial as ``adb devices`` lists it (a USB serial or
``192.168.1.50:5555``); unset means the only device attached. ``board.port`` is not used: the
adb server's address comes from the constructor (default 127.0.0.1:5037, or
``ANDROID_ADB_SERVER_HOST`` / ``ANDROID_ADB_SERVER_PORT``).

Commands use the ``shell,v2:`` service when the device lists the ``shell_v2`` feature (separate
stderr, real exit code); otherwise ``shell:``, where stderr is mixed into stdout and the exit
code comes from an ``echo`` appended to the command. Files go through the ``sync:`` service's
SEND request, written here so that each read and write has a timeout (adbutils' own push has
none). Unlike SFTP, SEND cannot append, so an interrupted push starts over.
"""

from __future__ import annotations

import logging
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

import adbutils
from adbutils import AdbConnection, AdbDevice, AdbError

from rkpipe.board.ssh import RemoteTransport
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError

log = logging.getLogger(__name__)

EXIT_MARKER = "RKPIPE-EXIT:"
SYNC_CHUNK = 64 * 1024  # the sync protocol's maximum DATA payload
SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT = 1, 2, 3


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
        deadline = time.monotonic() + timeout
        device = self._device()
        try:
            conn = device.open_transport(timeout=timeout)
            try:
                if self._shell_v2:
                    code, out, err = _shell_v2(conn, command, deadline)
                else:
                    code, out, err = _shell_v1(conn, command, deadline)
            finally:
                conn.close()
        except TimeoutError:
            raise BoardError(
                f"timed out after {timeout:.0f} s on adb device: {command[:200]}"
            ) from None
        except (AdbError, OSError, EOFError) as exc:
            self.close()
            raise BoardError(self._unreachable(exc)) from None
        return subprocess.CompletedProcess(command, code, out, err)

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


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    """Exactly ``n`` bytes; TimeoutError past ``deadline``, EOFError if the peer closes."""
    buf = bytearray()
    while len(buf) < n:
        chunk = _recv(sock, n - len(buf), deadline)
        if not chunk:
            raise EOFError(f"adb connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket, n: int, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    try:
        return sock.recv(n)
    except TimeoutError:
        raise TimeoutError from None


def _shell_v2(conn: AdbConnection, command: str, deadline: float) -> tuple[int, str, str]:
    """Run on the ``shell,v2:`` service: packets [id:1][len:4 LE][data]; id 3 is the exit."""
    conn.send_command(f"shell,v2:{command}")
    conn.check_okay()
    streams = {SHELL_STDOUT: bytearray(), SHELL_STDERR: bytearray()}
    while True:
        header = _recv_exact(conn.conn, 5, deadline)
        kind, length = header[0], struct.unpack("<I", header[1:])[0]
        data = _recv_exact(conn.conn, length, deadline) if length else b""
        if kind == SHELL_EXIT:
            code = data[0] if data else 255
            break
        if kind in streams:
            streams[kind] += data
    out, err = (streams[k].decode("utf-8", "replace") for k in (SHELL_STDOUT, SHELL_STDERR))
    return code, out, err


def _shell_v1(conn: AdbConnection, command: str, deadline: float) -> tuple[int, str, str]:
    """Run on the legacy ``shell:`` service: one mixed stream, exit code echoed at the end."""
    conn.send_command(f"shell:{command} ; echo {EXIT_MARKER}$?")
    conn.check_okay()
    data = bytearray()
    while chunk := _recv(conn.conn, 65536, deadline):
        data += chunk
    head, marker, tail = bytes(data).rpartition(EXIT_MARKER.encode())
    if not marker or not tail.strip().isdigit():
        raise EOFError("the shell: service ended without the exit-code marker")
    return int(tail.strip()), head.decode("utf-8", "replace"), ""


def _sync_send(conn: AdbConnection, local: Path, remote: str) -> None:
    """``sync:`` SEND: "SEND" + len + "path,mode", DATA chunks, "DONE" + mtime, then OKAY."""
    conn.send_command("sync:")
    conn.check_okay()
    target = f"{remote},{stat.S_IFREG | 0o644}".encode()
    sock = conn.conn
    sock.sendall(b"SEND" + struct.pack("<I", len(target)) + target)
    with local.open("rb") as src:
        while chunk := src.read(SYNC_CHUNK):
            sock.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    sock.sendall(b"DONE" + struct.pack("<I", int(time.time())))
    status = conn.read_exact(4)
    if status != b"OKAY":
        length = struct.unpack("<I", conn.read_exact(4))[0]
        message = conn.read_exact(length).decode("utf-8", "replace")
        raise AdbError(f"device refused {remote}: {status.decode(errors='replace')} {message}")
    sock.sendall(b"QUIT" + struct.pack("<I", 0))
