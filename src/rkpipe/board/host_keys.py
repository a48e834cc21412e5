"""SSH host keys of a board: OpenSSH fingerprints, the board's known_hosts file, the policy
that refuses an unknown key (with the ``rkpipe board trust`` command that works) and a changed
one, and ``trust_host``, which records a board's key after the user checked its fingerprint.
Paramiko's transport-thread tracebacks are demoted to debug: every failure reaches the user as
one :class:`~rkpipe.errors.BoardError` line."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
from pathlib import Path

import paramiko

from rkpipe.board.trust_hint import trust_command
from rkpipe.config.schema import BoardConfig
from rkpipe.errors import BoardError

log = logging.getLogger("rkpipe.board.ssh")  # the name users filter SSH messages by
CONNECT_TIMEOUT_S = 30.0


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key (base64, no padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host's name in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_path(board: BoardConfig) -> Path:
    """``board.known_hosts``, or ``~/.ssh/known_hosts`` when unset."""
    return Path(board.known_hosts or "~/.ssh/known_hosts").expanduser()


class _TransportErrorsToDebug(logging.Filter):
    """paramiko's transport thread logs every failure it hands to the caller at ERROR, with a
    traceback (a silent port: 30 lines before our one-line BoardError). Keep them at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        log.debug("paramiko transport: %s", record.getMessage())
        return False


_QUIET_TRANSPORT = _TransportErrorsToDebug()


def quiet_paramiko_transport() -> None:
    """Send paramiko's transport-thread errors to debug (idempotent)."""
    logger = logging.getLogger("paramiko.transport")
    if _QUIET_TRANSPORT not in logger.filters:
        logger.addFilter(_QUIET_TRANSPORT)


def require_host(board: BoardConfig) -> str:
    if not board.host:
        raise BoardError(f"board {board.name!r} has transport ssh but no host: set board.host")
    return board.host


class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, naming the key's fingerprint."""

    def __init__(self, board: BoardConfig) -> None:
        self.board = board

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        raise BoardError(
            f"unknown host key for {self.board.host}:{self.board.port}; run "
            f"`{trust_command(self.board)}` after checking the fingerprint "
            f"{fingerprint(key)} ({key.get_name()})"
        )


def changed_key_error(board: BoardConfig, got: paramiko.PKey, expected: paramiko.PKey):
    return BoardError(
        f"host key for {board.host}:{board.port} changed: {known_hosts_path(board)} has "
        f"{fingerprint(expected)} but the board presents {fingerprint(got)} ({got.get_name()}). "
        "If the board was re-imaged, delete its line from known_hosts and run "
        f"`{trust_command(board)}`; otherwise someone may be intercepting the connection"
    )


def presented_key(host: str, port: int, timeout: float) -> paramiko.PKey:
    """The host key an SSH server presents (no authentication is attempted).

    Raises:
        OSError, paramiko.SSHException: it cannot be reached or does not speak SSH.
    """
    quiet_paramiko_transport()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
            return transport.get_remote_server_key()
        finally:
            transport.close()


def fetch_host_key(board: BoardConfig, timeout: float = CONNECT_TIMEOUT_S) -> paramiko.PKey:
    """The host key the board presents (no authentication is attempted).

    Raises:
        BoardError: the board cannot be reached or does not speak SSH.
    """
    host = require_host(board)
    try:
        return presented_key(host, board.port, timeout)
    except (OSError, paramiko.SSHException) as exc:
        raise BoardError(f"cannot fetch the host key of {host}:{board.port}: {exc}") from None


def trust_host(board: BoardConfig) -> str:
    """Append the board's current host key to its known_hosts; return the fingerprint.

    What ``rkpipe board trust <conf/board option>`` calls (the refusal prints the exact
    command, see :mod:`rkpipe.board.trust_hint`), after the user compared the fingerprint the
    refusal printed with the board's own (``ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub``).
    A key already recorded is not added twice.

    Raises:
        BoardError: unreachable board, or known_hosts already holds a *different* key of the
        same type for it (delete that line first: a changed key is never overwritten silently).
    """
    key = fetch_host_key(board, timeout=min(board.timeout_s, CONNECT_TIMEOUT_S))
    path = known_hosts_path(board)
    name = known_hosts_name(require_host(board), board.port)
    known = paramiko.HostKeys(str(path)) if path.exists() else paramiko.HostKeys()
    recorded = (known.lookup(name) or {}).get(key.get_name())
    if recorded is not None and recorded != key:
        raise changed_key_error(board, key, recorded)
    if recorded is None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a", encoding="ascii") as handle:
            handle.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        path.chmod(0o600)
        log.info("trusted %s key %s of %s in %s", key.get_name(), fingerprint(key), name, path)
    return fingerprint(key)
