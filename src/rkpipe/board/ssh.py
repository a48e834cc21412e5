"""Reach a board over SSH (paramiko): commands on exec channels, files over SFTP.

:class:`RemoteTransport` holds what every remote transport shares (it satisfies
:class:`rkpipe.board.deploy.Transport` plus ``push``): commands are built with
``shlex.quote`` on every argument, and files are pushed content-addressed — the local
sha256 is compared with the board's ``sha256sum`` and an equal file is skipped; otherwise
the bytes go to ``<workdir>/.partial/<name>.<sha256>``, are verified there and renamed onto
the final name with ``mv`` (atomic on one file system). :class:`SshTransport` adds the
SSH specifics: host keys checked against ``board.known_hosts`` (unknown or changed keys are
refused; :func:`trust_host` records one after the user checked its fingerprint), key-file or
agent authentication, and uploads that resume from the partial file's size after a dropped
connection.

Runners run under ``engine_shared.py``'s watchdog (:meth:`RemoteTransport.runner_command`), with
the command's stdin held open: when this side dies or gives up, the channel closes, the
watchdog reads EOF and kills the runner's process group, so no benchmark outlives its stage.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import posixpath
import select
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import paramiko

import rkpipe.engines
from rkpipe.board.host_keys import (
    CONNECT_TIMEOUT_S,
    RefuseUnknownHost,
    changed_key_error,
    known_hosts_path,
    quiet_paramiko_transport,
    require_host,
)
from rkpipe.config.schema import BoardConfig
from rkpipe.engines.engine_shared import WATCHDOG_FLAG
from rkpipe.errors import BoardError
from rkpipe.io import sha256_file
from rkpipe.progress import transfer

log = logging.getLogger(__name__)

ENGINES_DIR = Path(rkpipe.engines.__file__).resolve().parent
ENGINE_SHARED = ENGINES_DIR / "engine_shared.py"  # every engine imports it
CHUNK_BYTES = 256 * 1024
POLL_S = 0.1
NAME_KEEP = 150  # of a file name in its partial's name: + "." + 64 hex digits < NAME_MAX 255

ChunkHook = Callable[[int], None]

# $1: partial dir to create, $2: a directory to list ("" for none), then the files to digest.
# Prints "<sha256>  -" or "-" per file, then the listing, all NUL-terminated. POSIX sh and
# busybox: `sha256sum < file` prints no file name, so odd names need no unescaping.
_DIGESTS_SCRIPT = (
    'mkdir -p -- "$1" || exit 1; root=$2; shift 2; '
    'for f do if [ -f "$f" ]; then printf "%s\\0" "$(sha256sum < "$f")"; '
    'else printf "%s\\0" -; fi; done; '
    'if [ -n "$root" ] && [ -d "$root" ]; then find "$root" -type f -print0; fi'
)
# $1: n, then n groups (partial, final dir, final, sha256), then stale files to delete.
# Exit 3 and print the group's index when a partial's digest is wrong (it is deleted).
_FINISH_SCRIPT = (
    "n=$1; shift; i=0; "
    'while [ "$i" -lt "$n" ]; do '
    'got=$(sha256sum < "$1"); got=${got%% *}; '
    'if [ "$got" != "$4" ]; then rm -f -- "$1"; echo "$i"; exit 3; fi; '
    'mkdir -p -- "$2" && mv -f -- "$1" "$3" || exit 4; '
    "i=$((i+1)); shift 4; done; "
    '[ "$#" -eq 0 ] || rm -f -- "$@"'
)


def parse_sha256sum(stdout: str) -> str | None:
    """The digest in ``sha256sum`` output (GNU prefixes a backslash for odd file names)."""
    fields = stdout.split()
    digest = fields[0].lstrip("\\") if fields else ""
    return digest if len(digest) == 64 else None


class RemoteTransport:
    """What SSH and ADB transports share: quoted commands and content-addressed pushes.

    Subclasses implement :meth:`_exec` (run one shell command line) and :meth:`_upload`
    (copy one local file to a remote path, resuming if they can).

    Args:
        board: the board (``workdir`` is where pushed files and runners live).
        python: the board's Python that runs the runners.
    """

    @classmethod
    def for_board(cls, board: BoardConfig) -> RemoteTransport:
        """The transport to ``board``, running the engines with ``board.python``."""
        return cls(board, python=board.python)

    def __init__(self, board: BoardConfig, python: str = "python3") -> None:
        self.board = board
        self.python = python
        self.workdir = board.workdir.rstrip("/") or "/"

    def _exec(
        self, command: str, timeout: float, hold_stdin: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run one command line; ``hold_stdin`` keeps its stdin open until it ends (the
        watchdog's sign of life) instead of closing it at once."""
        raise NotImplementedError

    def _upload(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the board (each argument shell-quoted) within ``timeout`` seconds.

        Returns a CompletedProcess with returncode, stdout and stderr (text).

        Raises:
            BoardError: timeout or lost connection.
        """
        # A watched runner reads EOF on stdin when the connection goes: keep it open until then.
        watched = WATCHDOG_FLAG in argv
        result = self._exec(shlex.join(str(arg) for arg in argv), timeout, hold_stdin=watched)
        return subprocess.CompletedProcess(
            list(argv), result.returncode, result.stdout, result.stderr
        )

    def check(self, argv: Sequence[str], timeout: float | None = None) -> str:
        """:meth:`run` that raises BoardError (with stderr's tail) on a non-zero exit."""
        result = self.run(argv, self.board.timeout_s if timeout is None else timeout)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise BoardError(f"`{shlex.join(argv)}` failed with {result.returncode}: {tail}")
        return result.stdout

    def remote_sha256(self, path: str) -> str | None:
        """The board's ``sha256sum`` of ``path``, or None when it does not exist."""
        result = self.run(["sha256sum", "--", path], self.board.timeout_s)
        return parse_sha256sum(result.stdout) if result.returncode == 0 else None

    def remote_path(self, local: Path) -> str:
        """Where :meth:`push` puts ``local``: ``<workdir>/files/<tag>/<name>``, the tag being a
        hash of the local parent directory (two local ``quantized/`` dirs do not collide)."""
        parent = str(local.resolve().parent).encode()
        tag = hashlib.sha256(parent).hexdigest()[:12]
        return f"{self.workdir}/files/{tag}/{local.name}"

    def push(self, local: Path) -> str:
        """Copy a file or directory (file by file) to the board; return its remote path.

        Unchanged files are skipped; files that vanished locally are removed from the
        board's copy of a directory. Two shell commands per push whatever the file count
        (digests before, verify-and-rename after), plus the SFTP transfers.

        Raises:
            BoardError: missing local path, lost connection, or a copy that fails verification.
        """
        local = Path(local)
        remote = self.remote_path(local)
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file())
            pairs = [(f, posixpath.join(remote, *f.relative_to(local).parts)) for f in files]
            self._sync(pairs, listed_root=remote)
        elif local.is_file():
            self._sync([(local, remote)])
        else:
            raise BoardError(f"cannot push {local}: no such file or directory")
        return remote

    def push_file(self, local: Path, remote: str) -> bool:
        """Copy one file to ``remote`` unless it already holds the same bytes.

        Returns True when bytes were copied, False when skipped.

        Raises:
            BoardError: lost connection, or the copy's sha256 differs from the local file's.
        """
        return bool(self._sync([(Path(local), remote)]))

    def _sync(self, pairs: list[tuple[Path, str]], listed_root: str | None = None) -> int:
        """Upload the (local, remote) pairs whose remote digest differs; return how many.

        With ``listed_root``, files under it that are not among the pairs are removed.
        """
        digests = [sha256_file(local) for local, _ in pairs]
        remote_digests, listing = self._remote_digests([r for _, r in pairs], listed_root)
        todo, partials = [], set()
        for (local, remote), digest, got in zip(pairs, digests, remote_digests, strict=True):
            if got != digest:
                partial = self._partial_path(local.name, digest, partials)
                todo.append((local, remote, digest, partial))
        for local, remote, _, partial in todo:
            log.info("pushing %s (%.1f MB) to %s", local, local.stat().st_size / 1e6, remote)
            self._upload(local, partial)
        stale = sorted(set(listing) - {remote for _, remote in pairs})
        if todo or stale:
            self._finish(todo, stale)
        return len(todo)

    def _partial_path(self, name: str, digest: str, taken: set[str]) -> str:
        """``<workdir>/.partial/<name>.<sha256>``, suffixed ``.N`` when a file of the same name
        and bytes already goes to another place in this push."""
        base = f"{self.workdir}/.partial/{name[:NAME_KEEP]}.{digest}"
        partial, n = base, 1
        while partial in taken:
            partial, n = f"{base}.{n}", n + 1
        taken.add(partial)
        return partial

    def _remote_digests(
        self, paths: list[str], listed_root: str | None
    ) -> tuple[list[str | None], list[str]]:
        """sha256 of each remote path (None if absent) and the files under ``listed_root``;
        also creates the partial directory. One command."""
        argv = ["sh", "-c", _DIGESTS_SCRIPT, "sh", f"{self.workdir}/.partial", listed_root or ""]
        parts = self.check(argv + paths).split("\0")
        digests = [parse_sha256sum(part) for part in parts[: len(paths)]]
        return digests, [p for p in parts[len(paths) :] if p]

    def _finish(self, todo: list[tuple[Path, str, str, str]], stale: list[str]) -> None:
        """Verify each uploaded partial, rename it into place, delete stale files. One command."""
        args = [str(len(todo))]
        for _, remote, digest, partial in todo:
            args += [partial, posixpath.dirname(remote), remote, digest]
        result = self.run(["sh", "-c", _FINISH_SCRIPT, "sh", *args, *stale], self.board.timeout_s)
        if result.returncode == 3:
            local = todo[int(result.stdout.split()[-1])][0]
            raise BoardError(
                f"{local} arrived corrupted on the board (sha256 differs from the local file); "
                "the partial copy was removed: push again"
            )
        if result.returncode != 0:
            raise BoardError(f"cannot move pushed files into place: {result.stderr.strip()}")
        if stale:
            log.info("removed %d stale file(s) from the board", len(stale))

    def runner_command(self, engine: str) -> list[str]:
        """Push ``rkpipe/engines/<engine>.py`` and the ``engine_shared.py`` it imports to
        ``<workdir>/runners/`` and return the argv prefix that runs it with the board's Python,
        under the watchdog (:meth:`watched`).

        Raises:
            BoardError: no such engine, or the push failed.
        """
        source = ENGINES_DIR / f"{engine}.py"
        if not source.is_file():
            raise BoardError(f"no runner {engine!r}: expected {source}")
        self._sync([(path, f"{self.runners_dir}/{path.name}") for path in (source, ENGINE_SHARED)])
        return self.watched([self.python, f"{self.runners_dir}/{engine}.py"])

    @property
    def runners_dir(self) -> str:
        """Where :meth:`runner_command` pushes the engines and ``engine_shared.py``."""
        return f"{self.workdir}/runners"

    def watched(self, argv: Sequence[str]) -> list[str]:
        """``argv`` under ``engine_shared.py``'s watchdog (pushed by :meth:`runner_command`):
        its process group is killed when the connection that started it closes."""
        watchdog = f"{self.runners_dir}/{ENGINE_SHARED.name}"
        return [self.python, watchdog, WATCHDOG_FLAG, *argv]

    def model_path(self, local: Path) -> str:
        """Push ``local`` (file or directory) if needed and return where the board sees it."""
        return self.push(Path(local))


class SshTransport(RemoteTransport):
    """A board reached over SSH; see the module docstring.

    Args:
        board: ``host``, ``port``, ``user`` (default: the local user), ``key_file`` (default:
            the ssh-agent, then ~/.ssh keys), ``known_hosts``, ``workdir``, ``timeout_s``.
        python: the board's Python for the runners.
        on_chunk: called with the byte count written so far after each uploaded chunk
            (progress reporting; tests use it to cut the connection mid-push).

    Use as a context manager, or call :meth:`close`. Connects lazily and reconnects after a
    dropped connection.
    """

    def __init__(
        self, board: BoardConfig, python: str = "python3", on_chunk: ChunkHook | None = None
    ) -> None:
        super().__init__(board, python)
        require_host(board)
        self.on_chunk = on_chunk
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the SFTP session and the connection (safe to call twice)."""
        for handle in (self._sftp, self._client):
            try:
                if handle is not None:
                    handle.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the connection is already gone
        self._sftp = self._client = None

    def _connected(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client else None
        if transport is not None and transport.is_active():
            return self._client  # type: ignore[return-value]
        self.close()
        self._client = self._connect()
        return self._client

    def _connect(self) -> paramiko.SSHClient:
        board = self.board
        quiet_paramiko_transport()
        client = paramiko.SSHClient()
        path = known_hosts_path(board)
        if path.exists():
            client.load_host_keys(str(path))
        client.set_missing_host_key_policy(RefuseUnknownHost(board))
        timeout = min(board.timeout_s, CONNECT_TIMEOUT_S)
        user = board.user or getpass.getuser()
        log.debug(
            "connecting to %s@%s:%s (key file: %s)", user, board.host, board.port, board.key_file
        )
        try:
            client.connect(
                board.host, board.port, username=user,
                key_filename=board.key_file and os.path.expanduser(board.key_file),
                allow_agent=True, look_for_keys=board.key_file is None, timeout=timeout,
                banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
            )  # fmt: skip
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise changed_key_error(board, exc.key, exc.expected_key) from None
        except paramiko.AuthenticationException:
            client.close()
            raise BoardError(
                f"authentication as {user} on {board.host}:{board.port} failed: check "
                f"board.key_file ({board.key_file or 'unset: agent and ~/.ssh keys tried'})"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            error = _connect_error(board, client, exc, timeout)
            client.close()
            raise error from None
        except BaseException:
            client.close()
            raise
        return client

    def _exec(
        self, command: str, timeout: float, hold_stdin: bool = False
    ) -> subprocess.CompletedProcess[str]:
        try:
            channel = self._connected().get_transport().open_session(timeout=timeout)
            try:
                channel.exec_command(command)
                if not hold_stdin:
                    channel.shutdown_write()
                stdout, stderr = _drain(channel, time.monotonic() + timeout)
                code = channel.recv_exit_status()
            finally:
                channel.close()
        except TimeoutError:
            raise BoardError(
                f"timed out after {timeout:.0f} s on {self.board.host}: {command[:200]}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise BoardError(
                f"lost the connection to {self.board.host}:{self.board.port}: {exc}"
            ) from None
        return subprocess.CompletedProcess(command, code, stdout, stderr)

    def _sftp_client(self) -> paramiko.SFTPClient:
        client = self._connected()
        if self._sftp is None or self._sftp.get_channel().closed:
            self._sftp = client.open_sftp()
            self._sftp.get_channel().settimeout(self.board.timeout_s)
        return self._sftp

    def _upload(self, local: Path, remote: str) -> None:
        """SFTP copy to ``remote``, appending from its current size when a partial exists."""
        sftp = self._sftp_client()
        total, done = local.stat().st_size, 0
        try:
            done = _remote_size(sftp, remote)
            if done > total:
                sftp.remove(remote)
                done = 0
            if done:
                log.info("resuming %s at %d of %d bytes", remote, done, total)
            bar = transfer(f"pushing {local.name} to {self.board.host}", total)
            with (
                sftp.open(remote, "r+b" if done else "wb") as dst,
                local.open("rb") as src,
                bar as shown,
            ):
                dst.seek(done)
                src.seek(done)
                dst.set_pipelined(True)
                while chunk := src.read(CHUNK_BYTES):
                    dst.write(chunk)
                    done += len(chunk)
                    shown(done)
                    if self.on_chunk is not None:
                        self.on_chunk(done)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise BoardError(
                f"connection lost while pushing {local.name} to {self.board.host} "
                f"({done} of {total} bytes sent; the partial file is kept): push again to resume "
                f"({exc or type(exc).__name__})"
            ) from None


def _connect_error(
    board: BoardConfig, client: paramiko.SSHClient, exc: BaseException, timeout: float
) -> BoardError:
    """One line for a failed connect. A listener that accepts and never sends the SSH banner
    makes paramiko fail later with a misleading "No existing session": name the real cause."""
    transport = client.get_transport()
    if transport is not None and not transport.remote_version:
        return BoardError(
            f"{board.host}:{board.port} accepted the connection but sent no SSH banner within "
            f"{timeout:g} s: expected an SSH server there; check board.host and board.port"
        )
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = sorted({err.strerror or str(err) for err in exc.errors.values()})
        return BoardError(
            f"cannot connect to {board.host}:{board.port}: {'; '.join(reasons)}; check that "
            "the board is up and that board.port is its SSH port"
        )
    return BoardError(f"cannot connect to {board.host}:{board.port}: {exc}")


def _remote_size(sftp: paramiko.SFTPClient, path: str) -> int:
    try:
        return int(sftp.stat(path).st_size or 0)
    except FileNotFoundError:
        return 0


def _read_available(channel: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while channel.recv_ready():
        out += channel.recv(65536)
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(65536)


def _drain(channel: paramiko.Channel, deadline: float) -> tuple[str, str]:
    """Read stdout and stderr until EOF and the exit status; TimeoutError past ``deadline``."""
    out, err = bytearray(), bytearray()
    while not (channel.eof_received or channel.closed):
        _read_available(channel, out, err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        select.select([channel], [], [], min(remaining, POLL_S))
    _read_available(channel, out, err)
    if not channel.status_event.wait(max(deadline - time.monotonic(), 0.0)):
        raise TimeoutError
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
