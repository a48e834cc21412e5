"""Rebuild a run (``rkpipe reproduce``): its commit in a clean git worktree, its params.yaml,
``dvc repro --force`` with an empty cache of its own and the worktree's own ``src``; then
compare with what the run recorded."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.errors import ReproduceError
from rkpipe.reproduce.compare import (
    MetricComparison,
    OutputComparison,
    compare_metrics,
    compare_outputs,
    metrics_from_files,
    metrics_in,
)
from rkpipe.reproduce.record import HASHES_ARTIFACT, LEGACY_HASH, output_record
from rkpipe.workspace import host_dependent_metrics, run_git

log = logging.getLogger(__name__)

PARAMS_ARTIFACT = "dvc/params.yaml"
CONFIG_ARTIFACT = "config/resolved.yaml"
HOST_ID_TAG = "measured.evaluate.host_id"  # the run's host fingerprint (rkpipe.hostinfo)
HEADLINE_TIMINGS = ("ttft_ms", "decode_tok_per_s", "peak_rss_mb", "asr_rtf", "quantize_s")


@dataclass
class RunRecords:
    """What a run recorded for its rebuild."""

    run_id: str
    name: str
    sha: str
    dirty: bool
    params_yaml: str
    outputs: dict[str, dict[str, str]]
    metrics: dict[str, float]
    versions: dict[str, str]
    tags: dict[str, str]


def load_records(store: Any, run_id: str) -> RunRecords:
    """Read the rebuild records of ``run_id``; raises :class:`ReproduceError` listing
    every missing record and how to get it."""
    run = store.get(run_id)
    missing = []
    sha = run.tags.get("git.sha", "unknown")
    if sha == "unknown" or not sha:
        missing.append("tag git.sha (the run was not made in a git checkout)")
    params_yaml = store.read_artifact(run_id, PARAMS_ARTIFACT) or _params_from_config(
        store.read_artifact(run_id, CONFIG_ARTIFACT)
    )
    if params_yaml is None:
        missing.append(f"artifact {PARAMS_ARTIFACT} (or {CONFIG_ARTIFACT})")
    hashes_text = store.read_artifact(run_id, HASHES_ARTIFACT)
    if hashes_text is None:
        missing.append(f"artifact {HASHES_ARTIFACT} (written by the `record` stage)")
    if missing:
        raise ReproduceError(
            f"run {run_id} ({run.name}) lacks the records a rebuild needs: "
            + "; ".join(missing)
            + ". Re-run the variant with this version of rkpipe (dvc exp run -S ...) first."
        )
    versions = {k: v for k, v in run.tags.items() if k.startswith("version.")}
    return RunRecords(
        run_id, run.name, sha, run.tags.get("git.dirty") == "true", str(params_yaml),
        json.loads(str(hashes_text)), dict(run.metrics), versions, dict(run.tags),
    )  # fmt: skip


def _params_from_config(text: str | None) -> str | None:
    if text is None:
        return None
    import yaml

    data = yaml.safe_load(text)
    return yaml.safe_dump(data, sort_keys=False) if isinstance(data, dict) else None


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = run_git(repo, *args, timeout=600)
    if check and out.returncode != 0:
        raise ReproduceError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def check_commit(repo: Path, sha: str) -> None:
    """Raise :class:`ReproduceError` unless ``sha`` is a commit of the repository ``repo``."""
    if _git(repo, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode != 0:
        raise ReproduceError(
            f"commit {sha} recorded by the run is not in the repository {repo}; "
            f"fetch it first (e.g. `git fetch origin {sha}`)"
        )


def rebuild_env(worktree: Path) -> dict[str, str]:
    """The environment of the rebuild: the worktree's own ``src`` first on ``PYTHONPATH``,
    its own MLflow store (the original run stays untouched), no sweep or DVC experiment
    variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "RKPIPE_PARENT", "MLFLOW_TRACKING_URI"))
    }
    python_path = [str(worktree / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{worktree / '.mlflow' / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def rebuild(
    repo: Path, records: RunRecords, worktree: Path, pull: bool = False, timeout: float = 7200
) -> Path:
    """Check out ``records.sha`` at ``worktree``, write the run's params.yaml, give it an
    empty DVC cache of its own, and ``dvc repro --force`` there; with ``pull``,
    ``dvc repro --pull`` instead: a stage whose outputs the DVC remote holds is pulled into
    that empty cache rather than rebuilt (:func:`stage_sources` says which). Returns the log.

    Raises :class:`ReproduceError` with the log's tail when ``dvc repro`` fails.
    """
    _git(repo, "worktree", "add", "--detach", str(worktree), records.sha)
    (worktree / "params.yaml").write_text(records.params_yaml, encoding="utf-8")
    local_config = repo / ".dvc" / "config.local"  # the remote's credentials stay out of git
    if pull and local_config.is_file():
        shutil.copy2(local_config, worktree / ".dvc" / "config.local")
    env = rebuild_env(worktree)
    cache = worktree / ".dvc" / "cache"
    subprocess.run(
        ["dvc", "config", "--local", "cache.dir", str(cache)], cwd=worktree, env=env, check=True
    )
    log_file = worktree / ".rkpipe-reproduce.log"
    how = "pulling what the DVC remote holds" if pull else "rebuilding every stage"
    log.info("reproducing run %s at %s in %s, %s", records.run_id, records.sha[:12], worktree, how)
    with open(log_file, "w", encoding="utf-8") as handle:
        code = subprocess.run(
            ["dvc", "repro", "--pull" if pull else "--force"], cwd=worktree, env=env,
            stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
        ).returncode  # fmt: skip
    if code != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-15:])
        raise ReproduceError(f"dvc repro failed in {worktree} (exit {code}):\n{tail}")
    return log_file


# What dvc repro logs for each way a stage's outputs came to be (dvc/stage/__init__.py, run.py,
# cache.py of DVC 3): run, pulled because unchanged, restored from the run cache, or unchanged.
STAGE_EVENTS = (
    (re.compile(r"^Running stage '([^']+)'"), "rebuilt"),
    (re.compile(r"^Pulling data for stage: '([^']+)'"), "pulled"),
    (re.compile(r"^Unable to pull data for stage: '([^']+)'"), "rebuilt"),
    (re.compile(r"^Stage '([^']+)' is cached - skipping run"), "restored from the run cache"),
    (re.compile(r"^Stage '([^']+)' didn't change, skipping"), "unchanged"),
)


def stage_sources(log_text: str) -> dict[str, str]:
    """``{stage: how its outputs came to be}`` from a ``dvc repro`` log, in pipeline order;
    the last event of a stage wins (an unpullable stage is then run)."""
    sources: dict[str, str] = {}
    for line in log_text.splitlines():
        for pattern, source in STAGE_EVENTS:
            match = pattern.match(line.strip())
            if match:
                sources[match.group(1)] = source
                break
    return sources


def remove_worktree(repo: Path, worktree: Path) -> None:
    """Remove the rebuild's worktree (files and git's record of it)."""
    _git(repo, "worktree", "remove", "--force", str(worktree), check=False)
    shutil.rmtree(worktree, ignore_errors=True)
    _git(repo, "worktree", "prune", check=False)


@dataclass
class ReproduceResult:
    """The verdict of one rebuild."""

    records: RunRecords
    worktree: Path
    outputs: OutputComparison
    metrics: MetricComparison
    version_changes: dict[str, tuple[str, str]]
    # The host fingerprints of the run's and the rebuild's measurements ("" when unknown).
    hosts: tuple[str, str] = ("", "")
    # How each stage's outputs came to be (stage_sources), and the remote pulled from.
    sources: dict[str, str] = field(default_factory=dict)
    remote: str = ""

    @property
    def ok(self) -> bool:
        """Byte-identical artifacts and equal non-timing metrics."""
        return self.outputs.ok and not self.metrics.differ


def reproduce(
    run_id: str,
    repo: Path,
    store: Any,
    workdir: Path | None = None,
    allow_dirty: bool = False,
    keep: bool = False,
    pull: bool | None = None,
) -> ReproduceResult:
    """Rebuild run ``run_id`` of ``repo`` and compare it with what the run recorded.

    ``pull`` (default: when the repository has a default DVC remote) pulls the outputs of
    every stage the remote holds instead of rebuilding it; the result says which it did.
    Refuses (:class:`ReproduceError`) when records are missing, the commit is not in
    the repository, or the run was made from a dirty tree (unless ``allow_dirty``).
    """
    from rkpipe.remote import default_remote
    from rkpipe.secrets import redact_uri
    from rkpipe.tracking import runtime_versions

    records = load_records(store, run_id)
    check_commit(repo, records.sha)
    if records.dirty and not allow_dirty:
        raise ReproduceError(
            f"run {run_id} was made from a tree that differed from commit {records.sha[:12]} "
            f"({records.tags.get('git.dirty_files', '?')}); its code is in no commit. "
            "Pass --allow-dirty to rebuild from the commit anyway."
        )
    import yaml

    params = yaml.safe_load(records.params_yaml)
    paths = params.get("paths", {})
    metrics_dir = paths.get("metrics_dir", "metrics")
    worktree = workdir or Path(tempfile.mkdtemp(prefix="rkpipe-reproduce-")) / "worktree"
    remote = default_remote(repo) if pull is not False else None
    try:
        log_file = rebuild(repo, records, worktree, pull=remote is not None)
        sources = stage_sources(log_file.read_text(encoding="utf-8"))
        hosts = (records.tags.get(HOST_ID_TAG, ""), _host_id(worktree, paths))
        same_host = not all(hosts) or hosts[0] == hosts[1]
        algorithm = records.outputs.get("hash", LEGACY_HASH)
        outputs = compare_outputs(records.outputs, output_record(worktree, params, algorithm))
        measured = [worktree / p for p in host_dependent_metrics(worktree / "dvc.yaml", params)]
        metrics = compare_metrics(
            records.metrics, metrics_from_files(worktree / metrics_dir), same_host,
            host_dependent=[k for path in measured for k in metrics_in(path)],
        )  # fmt: skip
    finally:
        if not keep:
            remove_worktree(repo, worktree)
            if workdir is None:
                shutil.rmtree(worktree.parent, ignore_errors=True)
    current = runtime_versions()
    changes = {
        k: (v, current.get(k, "absent")) for k, v in records.versions.items() if current.get(k) != v
    }
    where = f"{remote[0]} ({redact_uri(remote[1])})" if remote else ""
    return ReproduceResult(records, worktree, outputs, metrics, changes, hosts, sources, where)


def _host_id(worktree: Path, paths: Mapping[str, Any]) -> str:
    """The id of the host fingerprint the rebuild wrote ("" when it wrote none)."""
    from rkpipe.hostinfo import host_file

    path = worktree / host_file(paths.get("data_dir", "data"))
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("id", ""))
    except (OSError, ValueError):
        return ""


def render_result(result: ReproduceResult, verbose: bool = False) -> str:
    """The human summary ``rkpipe reproduce`` prints (every timing with ``verbose``)."""
    r, o = result.records, result.outputs
    lines = [
        f"run {r.run_id} ({r.name}) reproduced at commit {r.sha[:12]}",
        f"artifacts: {len(o.identical)} byte-identical, {len(o.differ)} differ, "
        f"{len(o.missing)} missing, {len(o.timings_only)} differ only in timings, "
        f"{len(o.derived)} reports embed timings",
    ]
    lines += [f"  DIFFERS  {p}" for p in o.differ] + [f"  MISSING  {p}" for p in o.missing]
    lines += [f"  timings  {p} (equal once timing keys are dropped)" for p in o.timings_only]
    lines += [f"  timings  {p} (report that embeds timings; not counted)" for p in o.derived]
    lines += [f"  extra    {p}" for p in o.extra]
    lines += _source_lines(result)
    lines += _measurement_lines(result, verbose)
    for key, (was, now) in result.version_changes.items():
        lines.append(f"note: {key} was {was} for the run, is {now} now")
    verdict = "REPRODUCED: byte-identical artifacts" if result.ok else "NOT REPRODUCED"
    lines.append(verdict + ("" if result.ok else " (see DIFFERS/MISSING above)"))
    return "\n".join(lines)


def _source_lines(result: ReproduceResult) -> list[str]:
    """Which stages were pulled from the DVC remote and which were rebuilt."""
    if not result.remote:
        return ["stages: every stage rebuilt (no DVC remote to pull from)"]
    by_source: dict[str, list[str]] = {}
    for stage, source in result.sources.items():
        by_source.setdefault(source, []).append(stage)
    lines = [f"stages: pulled from DVC remote {result.remote} where it holds them"]
    lines += [f"  {source}: {', '.join(stages)}" for source, stages in by_source.items()]
    return lines


def _measurement_lines(result: ReproduceResult, verbose: bool) -> list[str]:
    o, m = result.outputs, result.metrics
    run_host, rebuilt_host = result.hosts
    if m.other_host:
        lines = [
            f"measurements: made on another host (run {run_host}, rebuild {rebuilt_host}); "
            f"{len(m.other_host)} metrics and {len(o.measurements)} measurement files listed "
            "apart, not compared"
        ]
        shown = [k for k in m.other_host if verbose or k in HEADLINE_TIMINGS or k == "ppl"]
        lines += [f"  measured {k}: run {m.other_host[k][0]:.4g} vs rebuild "
                  f"{m.other_host[k][1]:.4g}" for k in shown]  # fmt: skip
        return lines
    lines = [
        f"measurements (same host {rebuilt_host or 'unknown'}): {len(m.equal)} metrics equal, "
        f"{len(m.differ)} differ, {len(m.timings)} timings ({len(m.outside_spread)} outside "
        f"the run-to-run spread), {len(o.measurements)} measurement files"
    ]
    lines += [f"  DIFFERS  {k}: run {a!r} vs rebuilt {b!r}" for k, (a, b) in m.differ.items()]
    lines += [f"  spread   {k}: run {a:.4g} vs rebuilt {b:.4g} (outside the run-to-run spread; "
              "not counted)" for k, (a, b) in m.outside_spread.items()]  # fmt: skip
    shown = [k for k in m.timings if verbose or k in HEADLINE_TIMINGS]
    lines += [
        f"  timing   {k}: run {m.timings[k][0]:.4g} vs rebuilt {m.timings[k][1]:.4g}" for k in shown
    ]
    if len(shown) < len(m.timings):
        lines.append(f"  timing   ... {len(m.timings) - len(shown)} more (--verbose lists them)")
    return lines
