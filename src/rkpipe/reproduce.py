"""Record what a variant produced, and rebuild it from its MLflow run (``rkpipe reproduce``).

Recording (:func:`record_outputs`, run by the ``record`` stage after ``report``): the
sha256 of every file of every output declared in ``dvc.yaml``, logged to the variant's
run as ``outputs/sha256.json`` together with the final ``dvc.lock``.

Rebuilding (:func:`reproduce`): check out the run's commit in a clean ``git worktree``,
write the run's ``params.yaml``, run ``dvc repro --force`` there with a cache of its own
(an empty cache and run cache, so nothing is restored: every stage really runs) and the
worktree's own ``src`` on ``PYTHONPATH``, then compare output hashes and metrics with
the run's. Timings (latency, throughput, RTF, peak RSS) are inherently nondeterministic:
they are reported, never counted as mismatches.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rkpipe.errors import ReproduceError
from rkpipe.workspace import (
    declared_outputs,
    host_dependent_metrics,
    measurement_outputs,
    run_git,
)

log = logging.getLogger(__name__)

HASHES_ARTIFACT = "outputs/sha256.json"
PARAMS_ARTIFACT = "dvc/params.yaml"
CONFIG_ARTIFACT = "config/resolved.yaml"
RECORD_FILE = "outputs.sha256.json"  # under paths.reports_dir; the record stage's own out
HOST_ID_TAG = "measured.evaluate.host_id"  # the run's host fingerprint (rkpipe.hostinfo)
# Metric names that measure time, throughput or memory of a process: never reproducible.
TIMING = re.compile(r"(_ms|_s|tok_per_s|rtf|speedup|rss_mb)(_|$)")
HEADLINE_TIMINGS = ("ttft_ms", "decode_tok_per_s", "peak_rss_mb", "asr_rtf", "quantize_s")
# A timing rebuilt on the same host is "within the run-to-run spread" when it differs from the
# run's by at most SPREAD_SIGMAS of its recorded stddev, or SPREAD_FRACTION of it without one
# (decode speed moves by up to 25 % between runs on a shared 2-vCPU machine).
SPREAD_SIGMAS = 3.0
SPREAD_FRACTION = 0.25


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def hash_outputs(root: Path, outputs: Iterable[str]) -> dict[str, str]:
    """``{relative file path: sha256}`` for every file under each output (``missing`` when
    an output does not exist), sorted by path."""
    from rkpipe.io import sha256_file

    hashes: dict[str, str] = {}
    for out in outputs:
        path = root / out
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                hashes[file.relative_to(root).as_posix()] = sha256_file(file)
        elif path.is_file():
            hashes[Path(out).as_posix()] = sha256_file(path)
        else:
            hashes[Path(out).as_posix()] = "missing"
    return dict(sorted(hashes.items()))


def stable_digests(root: Path, files: Iterable[str]) -> dict[str, str]:
    """For each JSON file: sha256 of its canonical form without timing keys, so a rebuild
    can tell "differs only in timings" from a real difference."""
    import hashlib

    digests = {}
    for name in files:
        path = root / name
        if name.endswith(".json") and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            blob = json.dumps(_strip_timings(data), sort_keys=True, separators=(",", ":"))
            digests[name] = hashlib.sha256(blob.encode()).hexdigest()
    return digests


def output_record(root: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"files": {path: sha256}, "without_timings": {json path: digest}, "measurements":
    [output]}`` of every output declared in ``root/dvc.yaml`` but the record file itself."""
    reports_dir = params.get("paths", {}).get("reports_dir", "reports")
    own = f"{reports_dir}/{RECORD_FILE}"
    outs = [o for o in declared_outputs(root / "dvc.yaml", params) if o != own]
    files = hash_outputs(root, outs)
    return {
        "files": files,
        "without_timings": stable_digests(root, files),
        "measurements": measurement_outputs(root / "dvc.yaml", params),
    }


def record_outputs(cfg: Any, run: Any, root: Path | None = None) -> dict[str, Any]:
    """Hash every declared output, write the record to ``<reports_dir>/outputs.sha256.json``
    and log it (``outputs/sha256.json``) and the final ``dvc.lock`` to the variant's run."""
    from rkpipe.config import config_dict
    from rkpipe.io import write_json_atomic

    root = root or Path.cwd()
    record = output_record(root, config_dict(cfg))
    write_json_atomic(root / cfg.paths.reports_dir / RECORD_FILE, record)
    run.log_dict(record, HASHES_ARTIFACT)
    if (root / "dvc.lock").is_file():
        run.log_artifact(root / "dvc.lock", "dvc")
    _log_provenance(cfg, run, root, record["files"])
    log.info("recorded sha256 of %d output files", len(record["files"]))
    return record


def _log_provenance(cfg: Any, run: Any, root: Path, files: Mapping[str, str]) -> None:
    """Log the manifests (model commit, file hashes, toolkit version) and the calibration
    digest again: stages DVC restored from its run cache logged nothing to this run."""
    for path in (p for p in files if p.endswith("manifest.json")):
        run.log_artifact(root / path, f"manifests/{Path(path).parent.as_posix()}")
    calibration = f"{cfg.paths.data_dir}/calib/calibration.json"
    run.set_tags(
        {"calibration.sha256": files.get(calibration, "missing"), "outputs.files": len(files)}
    )


# --------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------


def is_timing(name: str) -> bool:
    """Whether a metric (or JSON key) measures time, throughput or memory use (a sample
    count such as ``ttft_ms_n`` does not)."""
    return bool(TIMING.search(name)) and not name.endswith("_n")


def _strip_timings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_timings(v) for k, v in data.items() if not is_timing(str(k))}
    if isinstance(data, list):
        return [_strip_timings(v) for v in data]
    return data


@dataclass
class OutputComparison:
    """Output files sorted by verdict."""

    identical: list[str] = field(default_factory=list)
    timings_only: list[str] = field(default_factory=list)  # JSON equal but for timing keys
    derived: list[str] = field(default_factory=list)  # markdown reports embedding timings
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded, not rebuilt
    extra: list[str] = field(default_factory=list)  # rebuilt, not recorded
    # Files of measurement outputs (metrics, benchmark samples, host facts) whose bytes differ:
    # compared as measurements (compare_metrics), never as artifacts.
    measurements: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No real difference (timings and timing-bearing reports do not count)."""
        return not (self.differ or self.missing)


def _under(path: str, outputs: Iterable[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


def compare_outputs(recorded: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> OutputComparison:
    """Sort the files of two :func:`output_record` results by verdict."""
    result = OutputComparison()
    files, stable = recorded["files"], recorded.get("without_timings", {})
    got_files, got_stable = rebuilt["files"], rebuilt.get("without_timings", {})
    # Records made before measurements were labelled: the rebuilt dvc.yaml says which they are.
    measured = set(recorded.get("measurements", [])) | set(rebuilt.get("measurements", []))
    for path, sha in files.items():
        got = got_files.get(path)
        if got is None or got == "missing":
            result.missing.append(path)
        elif got == sha:
            result.identical.append(path)
        elif path in stable and stable[path] == got_stable.get(path):
            result.timings_only.append(path)
        elif _under(path, measured):
            result.measurements.append(path)
        elif path.endswith(".md"):
            result.derived.append(path)
        else:
            result.differ.append(path)
    result.extra = sorted(set(got_files) - set(files))
    return result


@dataclass
class MetricComparison:
    """Metrics sorted by verdict: name -> (recorded, rebuilt).

    On another host (``other_host``) every metric is a measurement of that host and is only
    listed; on the same host, non-timing metrics must be equal and timings are checked
    against the run-to-run spread (``outside_spread`` is reported, not counted).
    """

    equal: dict[str, float] = field(default_factory=dict)
    differ: dict[str, tuple[float, float]] = field(default_factory=dict)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)
    only_recorded: list[str] = field(default_factory=list)
    outside_spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    other_host: dict[str, tuple[float, float]] = field(default_factory=dict)


def within_spread(name: str, recorded: float, rebuilt: float, metrics: Mapping[str, float]) -> bool:
    """Whether a rebuilt timing lies within the run-to-run spread of the recorded one."""
    stddev = metrics.get(f"{name}_stddev")
    tolerance = SPREAD_SIGMAS * stddev if stddev else SPREAD_FRACTION * abs(recorded)
    return abs(rebuilt - recorded) <= tolerance


def compare_metrics(
    recorded: Mapping[str, float],
    rebuilt: Mapping[str, float],
    same_host: bool = True,
    host_dependent: Iterable[str] = (),
) -> MetricComparison:
    """Compare the run's metrics with the rebuilt ones (see :class:`MetricComparison`).

    On another host, the timings and the ``host_dependent`` metrics (those of the stages that
    measure on the host: PPL, KLD ...) are listed apart; the rest (sizes, counts) must still
    be equal."""
    result = MetricComparison()
    measured_here = set(host_dependent)
    for name, value in sorted(recorded.items()):
        if name not in rebuilt:
            result.only_recorded.append(name)
        elif not same_host and (name in measured_here or is_timing(name)):
            result.other_host[name] = (value, rebuilt[name])
        elif is_timing(name):
            result.timings[name] = (value, rebuilt[name])
            if not name.endswith(("_stddev", "_min", "_max", "_p90")) and not within_spread(
                name, value, rebuilt[name], recorded
            ):
                result.outside_spread[name] = (value, rebuilt[name])
        elif float(value) == float(rebuilt[name]) or (
            math.isnan(value) and math.isnan(rebuilt[name])
        ):
            result.equal[name] = value
        else:
            result.differ[name] = (value, rebuilt[name])
    return result


def metrics_from_files(metrics_dir: Path) -> dict[str, float]:
    """The numeric entries of every ``*.json`` in ``metrics_dir`` (what the stages logged)."""
    metrics: dict[str, float] = {}
    for path in sorted(metrics_dir.glob("*.json")):
        metrics |= metrics_in(path)
    return metrics


def metrics_in(path: Path) -> dict[str, float]:
    """The numeric entries of one metrics file ({} when it is missing or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: float(v)
        for k, v in data.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


# --------------------------------------------------------------------------------------------
# Rebuilding
# --------------------------------------------------------------------------------------------


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


def rebuild(repo: Path, records: RunRecords, worktree: Path, timeout: float = 7200) -> Path:
    """Check out ``records.sha`` at ``worktree``, write the run's params.yaml, give it an
    empty DVC cache of its own, and ``dvc repro --force`` there. Returns the log file.

    Raises :class:`ReproduceError` with the log's tail when ``dvc repro`` fails.
    """
    _git(repo, "worktree", "add", "--detach", str(worktree), records.sha)
    (worktree / "params.yaml").write_text(records.params_yaml, encoding="utf-8")
    env = rebuild_env(worktree)
    cache = worktree / ".dvc" / "cache"
    subprocess.run(
        ["dvc", "config", "--local", "cache.dir", str(cache)], cwd=worktree, env=env, check=True
    )
    log_file = worktree / ".rkpipe-reproduce.log"
    log.info("rebuilding run %s at %s in %s", records.run_id, records.sha[:12], worktree)
    with open(log_file, "w", encoding="utf-8") as handle:
        code = subprocess.run(
            ["dvc", "repro", "--force"], cwd=worktree, env=env, stdout=handle,
            stderr=subprocess.STDOUT, timeout=timeout,
        ).returncode  # fmt: skip
    if code != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-15:])
        raise ReproduceError(f"dvc repro failed in {worktree} (exit {code}):\n{tail}")
    return log_file


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
) -> ReproduceResult:
    """Rebuild run ``run_id`` of ``repo`` and compare it with what the run recorded.

    Refuses (:class:`ReproduceError`) when records are missing, the commit is not in
    the repository, or the run was made from a dirty tree (unless ``allow_dirty``).
    """
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
    try:
        rebuild(repo, records, worktree)
        hosts = (records.tags.get(HOST_ID_TAG, ""), _host_id(worktree, paths))
        same_host = not all(hosts) or hosts[0] == hosts[1]
        outputs = compare_outputs(records.outputs, output_record(worktree, params))
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
    return ReproduceResult(records, worktree, outputs, metrics, changes, hosts)


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
        f"run {r.run_id} ({r.name}) rebuilt at commit {r.sha[:12]}",
        f"artifacts: {len(o.identical)} byte-identical, {len(o.differ)} differ, "
        f"{len(o.missing)} missing, {len(o.timings_only)} differ only in timings, "
        f"{len(o.derived)} reports embed timings",
    ]
    lines += [f"  DIFFERS  {p}" for p in o.differ] + [f"  MISSING  {p}" for p in o.missing]
    lines += [f"  timings  {p} (equal once timing keys are dropped)" for p in o.timings_only]
    lines += [f"  timings  {p} (report that embeds timings; not counted)" for p in o.derived]
    lines += [f"  extra    {p}" for p in o.extra]
    lines += _measurement_lines(result, verbose)
    for key, (was, now) in result.version_changes.items():
        lines.append(f"note: {key} was {was} for the run, is {now} now")
    verdict = "REPRODUCED: byte-identical artifacts" if result.ok else "NOT REPRODUCED"
    lines.append(verdict + ("" if result.ok else " (see DIFFERS/MISSING above)"))
    return "\n".join(lines)


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
