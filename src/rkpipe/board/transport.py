"""How commands reach a board: the :class:`Transport` protocol, the host as a board
(:class:`LocalTransport`), and the factory for ``board.transport`` (local, ssh, adb)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rkpipe.errors import BoardError
from rkpipe.registry import Registry

if TYPE_CHECKING:
    from rkpipe.config.schema import BoardConfig


class Transport(Protocol):
    """How commands reach a board."""

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the board and return its output (text)."""
        ...

    def runner_command(self, engine: str) -> list[str]:
        """The argv prefix that starts the runner ``engine`` (e.g. ``ort_llm``) on the board."""
        ...

    def model_path(self, local: Path) -> str:
        """Where the board sees the deployed copy of ``local``."""
        ...


class LocalTransport:
    """The host is the board: run the engines from the installed package, no copy needed."""

    @classmethod
    def for_board(cls, board: BoardConfig) -> LocalTransport:
        return cls()

    def run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the leader of a new process group that dies with this process.

        The group is SIGKILLed and reaped when the run ends, times out or is interrupted (the
        stage turns SIGTERM into an exception); PR_SET_PDEATHSIG kills the runner even when
        this process is SIGKILLed, which no ``finally`` survives.
        """
        from rkpipe.engines.engine_shared import die_with_parent, kill_group

        runner = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        try:
            stdout, stderr = runner.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(runner)
            runner.communicate()  # close the pipes
            raise BoardError(f"runner timed out after {timeout:.0f} s: {' '.join(argv)}") from None
        finally:
            kill_group(runner)  # stragglers the runner left, or all of it on an exception
        return subprocess.CompletedProcess(list(argv), runner.returncode, stdout, stderr)

    def runner_command(self, engine: str) -> list[str]:
        return [sys.executable, "-m", f"rkpipe.engines.{engine}"]

    def model_path(self, local: Path) -> str:
        return str(local.resolve())


# board.transport -> the class that reaches the board; adding a transport is one line here.
TRANSPORTS: Registry[type] = Registry(
    "board.transport",
    {
        "local": "rkpipe.board.transport:LocalTransport",
        "ssh": "rkpipe.board.ssh:SshTransport",
        "adb": "rkpipe.board.adb:AdbTransport",
    },
    error=BoardError,
)


def make_transport(board: BoardConfig) -> Transport:
    """The transport registered as ``board.transport`` (see :data:`TRANSPORTS`), for ``board``."""
    return TRANSPORTS.get(board.transport).for_board(board)
