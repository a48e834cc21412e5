"""A stand-in adb server on 127.0.0.1 whose one "device" is this machine.

It speaks the host side of the adb protocol that adbutils (and the ``adb`` client) use: a
request is four hex digits of length then the text, answered ``OKAY`` or ``FAIL`` + hex
length + message. Services:

* ``host:version``, ``host:devices``, ``host:tport:serial:<s>`` (answers an 8-byte transport
  id), ``host:transport:<s>``, ``host-serial:<s>:features``;
* on a device connection: ``shell:<cmd>`` (one mixed stream until close), ``shell,v2:<cmd>``
  (packets: id 1 stdout, 2 stderr, 3 exit code) and ``sync:`` with ``SEND`` (parents created,
  as adbd's ``fixed_push_mkdir`` does), ``STAT`` and ``QUIT``.

Commands run with ``sh -c`` as this user; a client that disconnects kills its command, like
adbd. What it does not cover: the server-to-adbd transport (USB / TCP ``A_OPEN`` / ``A_WRTE``
packets), authentication, and Android's toybox userland.
"""

from __future__ import annotations

import os
import select
import socket
import socketserver
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StandinState:
    """What the stand-in offers and what it saw."""

    serial: str = "standin-board"
    shell_v2: bool = True
    version: int = 41
    corrupt_pushes: bool = False  # flip the first byte of every pushed file
    sends: list[str] = field(default_factory=list)


class _Handler(socketserver.BaseRequestHandler):
    server: AdbStandin

    def handle(self) -> None:
        sock, state = self.request, self.server.state
        while (request := _read_request(sock)) is not None:
            if not self._host_request(sock, state, request):
                self._device_request(sock, state, request)
                return

    def _host_request(self, sock: socket.socket, state: StandinState, request: str) -> bool:
        """Answer a host service; False when ``request`` is a device service."""
        serial_prefix = f"host-serial:{state.serial}:"
        if request == "host:version":
            _okay(sock, f"{state.version:04x}")
        elif request in ("host:devices", "host:devices-l"):
            _okay(sock, f"{state.serial}\tdevice\n")
        elif request == f"host:tport:serial:{state.serial}":
            sock.sendall(b"OKAY" + struct.pack("<q", 1))
        elif request in (f"host:transport:{state.serial}", "host:transport-any"):
            sock.sendall(b"OKAY")
        elif request == serial_prefix + "features":
            _okay(sock, "shell_v2,cmd,stat_v2" if state.shell_v2 else "cmd")
        elif request.startswith(("host", "host-serial:")):
            _fail(sock, f"device '{request}' not found")
        else:
            return False
        return True

    def _device_request(self, sock: socket.socket, state: StandinState, request: str) -> None:
        if request.startswith("shell,v2:") and state.shell_v2:
            sock.sendall(b"OKAY")
            _run_shell(sock, request[len("shell,v2:") :], v2=True)
        elif request.startswith("shell:"):
            sock.sendall(b"OKAY")
            _run_shell(sock, request[len("shell:") :], v2=False)
        elif request == "sync:":
            sock.sendall(b"OKAY")
            _sync(sock, state)
        else:
            _fail(sock, f"unknown service {request}")


class AdbStandin(socketserver.ThreadingTCPServer):
    """Serve on 127.0.0.1 (free port) in a daemon thread: ``with AdbStandin() as s: s.port``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: StandinState | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state or StandinState()
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> AdbStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _read_request(sock: socket.socket) -> str | None:
    length = _read_exact(sock, 4)
    if length is None:
        return None
    payload = _read_exact(sock, int(length, 16))
    return None if payload is None else payload.decode("utf-8")


def _okay(sock: socket.socket, text: str) -> None:
    data = text.encode()
    sock.sendall(b"OKAY" + f"{len(data):04x}".encode() + data)


def _fail(sock: socket.socket, message: str) -> None:
    data = message.encode()
    sock.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)


def _run_shell(sock: socket.socket, command: str, v2: bool) -> None:
    """Run ``command``, stream its output, kill it if the client goes away."""
    stderr = subprocess.PIPE if v2 else subprocess.STDOUT
    proc = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
    )
    streams = {proc.stdout.fileno(): 1}
    if v2:
        streams[proc.stderr.fileno()] = 2
    try:
        while streams:
            ready, _, _ = select.select([*streams, sock], [], [])
            if sock in ready and not sock.recv(4096):
                proc.kill()  # the client hung up
                return
            for fd in [fd for fd in ready if fd in streams]:
                data = os.read(fd, 65536)
                if not data:
                    del streams[fd]
                elif v2:
                    sock.sendall(struct.pack("<BI", streams[fd], len(data)) + data)
                else:
                    sock.sendall(data)
        code = proc.wait()
        if v2:
            sock.sendall(struct.pack("<BI", 3, 1) + bytes([code & 0xFF]))
    except OSError:
        proc.kill()
    finally:
        proc.wait()


def _sync(sock: socket.socket, state: StandinState) -> None:
    while (header := _read_exact(sock, 8)) is not None:
        command, length = header[:4], struct.unpack("<I", header[4:])[0]
        arg = _read_exact(sock, length) or b""
        if command == b"SEND":
            _sync_send(sock, state, arg.decode("utf-8"))
        elif command == b"STAT":
            path = Path(arg.decode("utf-8"))
            info = path.stat() if path.exists() else None
            values = (info.st_mode, info.st_size, int(info.st_mtime)) if info else (0, 0, 0)
            sock.sendall(b"STAT" + struct.pack("<III", *values))
        else:  # QUIT or unknown
            return


def _sync_send(sock: socket.socket, state: StandinState, target: str) -> None:
    path_text, _, mode = target.rpartition(",")
    path = Path(path_text)
    state.sends.append(path_text)
    data = bytearray()
    while (header := _read_exact(sock, 8)) is not None and header[:4] == b"DATA":
        data += _read_exact(sock, struct.unpack("<I", header[4:])[0]) or b""
    if state.corrupt_pushes and data:
        data[0] ^= 0xFF
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(data))
        path.chmod(int(mode) & 0o7777)
    except (OSError, ValueError) as exc:
        message = str(exc).encode()
        sock.sendall(b"FAIL" + struct.pack("<I", len(message)) + message)
        return
    sock.sendall(b"OKAY" + struct.pack("<I", 0))
