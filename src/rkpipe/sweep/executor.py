"""Where sweep jobs run. The driver hands an :class:`Executor` a list of jobs (a name
and Hydra overrides each) and gets one :class:`JobResult` per job back; it never
needs to know how they ran.

Two implementations, both DVC experiments (so ``dvc.lock``, the cache and the run
cache stay authoritative): :class:`DvcQueueExecutor` (``dvc exp run --queue`` then
``dvc queue start -j N``; DVC's queue is local by design) and
:class:`DvcWorkspaceExecutor` (``dvc exp run`` one after another in the workspace).
A remote executor (a CI matrix, SSH hosts) is another class with the same ``run``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rkpipe.errors import RkpipeError

log = logging.getLogger(__name__)

DONE = ("Success", "Failed")


class SweepError(RkpipeError):
    """A sweep could not run (no valid variant, DVC queue failure, timeout)."""


@dataclass(frozen=True)
class Job:
    """One variant to build: a DVC experiment name and its Hydra overrides."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``success`` or ``failed``, its experiment commit, its log's tail."""

    name: str
    status: str
    exp_rev: str | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the experiment succeeded."""
        return self.status == "success"


class Executor(Protocol):
    """Runs jobs somewhere and reports each one's outcome."""

    name: str

    def run(self, jobs: Sequence[Job], env: Mapping[str, str]) -> list[JobResult]:
        """Run every job with ``env`` added to its environment; one result per job, in order."""
        ...


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ) | dict(extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(
    repo: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc <args>`` in ``repo`` (this interpreter's ``dvc`` first on PATH)."""
    return subprocess.run(
        ["dvc", *args], cwd=repo, capture_output=True, text=True, timeout=timeout,
        env=_env(env or {}),
    )  # fmt: skip


def exp_run_args(job: Job) -> list[str]:
    """``dvc exp run`` arguments for a job: its name and one ``-S`` per override."""
    args = ["--name", job.name]
    for override in job.overrides:
        args += ["-S", override]
    return args


def exp_revs(repo: Path) -> dict[str, str]:
    """``{experiment name: commit}`` of the experiments based on ``HEAD``."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", f"refs/exps/{head[:2]}"],
        cwd=repo, capture_output=True, text=True,
    ).stdout  # fmt: skip
    revs = {}
    for line in refs.splitlines():
        ref, _, sha = line.partition(" ")
        parts = ref.split("/")
        if len(parts) == 5 and parts[2] + parts[3] == head:
            revs[parts[4]] = sha
    return revs


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class DvcWorkspaceExecutor:
    """``dvc exp run`` in the workspace, one job after another (the last one stays applied)."""

    name = "workspace"

    def __init__(self, repo: Path, timeout_s: float = 6 * 3600) -> None:
        self.repo = repo
        self.timeout_s = timeout_s

    def run(self, jobs: Sequence[Job], env: Mapping[str, str]) -> list[JobResult]:
        """Run each job in turn; a failed job does not stop the others."""
        results = []
        for job in jobs:
            log.info("dvc exp run %s", " ".join(exp_run_args(job)))
            out = dvc(self.repo, "exp", "run", *exp_run_args(job), env=env, timeout=self.timeout_s)
            status = "success" if out.returncode == 0 else "failed"
            rev = exp_revs(self.repo).get(job.name)
            results.append(JobResult(job.name, status, rev, _tail(out.stdout + out.stderr)))
        return results


class DvcQueueExecutor:
    """DVC's local experiment queue: ``dvc exp run --queue`` per job, ``dvc queue start -j N``.

    With ``prime`` (default) the first job runs alone before the others are queued:
    it computes the stages every variant shares, which the parallel jobs then restore
    from DVC's run cache instead of computing them N times at once.
    """

    name = "dvc-queue"

    def __init__(
        self, repo: Path, jobs: int = 1, prime: bool = True, poll_s: float = 3.0,
        timeout_s: float = 6 * 3600,
    ) -> None:  # fmt: skip
        self.repo = repo
        self.jobs = max(1, jobs)
        self.prime = prime
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def run(self, jobs: Sequence[Job], env: Mapping[str, str]) -> list[JobResult]:
        """Queue and run the jobs; wait for all of them."""
        batches = [list(jobs[:1]), list(jobs[1:])] if self.prime else [list(jobs)]
        for batch in (b for b in batches if b):
            self._run_batch(batch, env)
        return self._results(jobs)

    def _run_batch(self, batch: Sequence[Job], env: Mapping[str, str]) -> None:
        for job in batch:
            out = dvc(self.repo, "exp", "run", "--queue", *exp_run_args(job), env=env)
            if out.returncode != 0:
                raise SweepError(f"cannot queue {job.name}: {_tail(out.stderr or out.stdout)}")
        workers = min(self.jobs, len(batch))
        log.info("dvc queue start -j %d (%d job(s))", workers, len(batch))
        out = dvc(self.repo, "queue", "start", "-j", str(workers), env=env)
        if out.returncode != 0:
            raise SweepError(f"dvc queue start failed: {_tail(out.stderr or out.stdout)}")
        self._wait([job.name for job in batch])

    def _wait(self, names: Sequence[str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        pending = set(names)
        while pending:
            if time.monotonic() > deadline:
                raise SweepError(f"timed out after {self.timeout_s:.0f} s waiting for {pending}")
            time.sleep(self.poll_s)
            states = queue_status(self.repo)
            for name in list(pending):
                if states.get(name) in DONE:
                    log.info("experiment %s: %s", name, states[name])
                    pending.discard(name)

    def _results(self, jobs: Sequence[Job]) -> list[JobResult]:
        states, revs = queue_status(self.repo), exp_revs(self.repo)
        results = []
        for job in jobs:
            ok = states.get(job.name) == "Success"
            tail = "" if ok else _tail(dvc(self.repo, "queue", "logs", job.name).stdout)
            status = "success" if ok else "failed"
            results.append(JobResult(job.name, status, revs.get(job.name), tail))
        return results


def queue_status(repo: Path) -> dict[str, str]:
    """``{experiment name: status}`` from ``dvc queue status`` (Queued, Running, Success,
    Failed)."""
    out = dvc(repo, "queue", "status")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in ("Queued", "Running", *DONE):
            states[parts[1]] = parts[-1]
    return states
