"""The workspace a variant is built in: its git state and the outputs its ``dvc.yaml`` declares.

Used by tracking (the tags a rebuild needs) and by reproduce (what to hash and compare), so
neither imports the other.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rkpipe.errors import ReproduceError

# Files a run changes by design: they never make the tree "dirty" for reproduction.
RUN_FILES = ("params.yaml", "dvc.lock")
MEASUREMENT_LABEL = "measurement"  # dvc.yaml ``labels`` of an out that holds measurements
_VAR = re.compile(r"\$\{([^}]+)\}")


def repo_root() -> Path:
    """The DVC repository root: ``DVC_ROOT`` (set by DVC, the parent repo for queued
    experiments), else the git top level, else the current directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        )
        if top.returncode == 0 and top.stdout.strip():
            return Path(top.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Path.cwd()


def run_git(
    root: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``git args`` in ``root``, output captured as text (never raises on a non-zero exit)."""
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout, input=stdin
    )


def git_output(root: Path, *args: str, stdin: str | None = None) -> str:
    """stdout of ``git args`` in ``root``; empty when git fails."""
    out = run_git(root, *args, stdin=stdin)
    return out.stdout if out.returncode == 0 else ""


def changed_files(root: Path, rev: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Files tracked at ``rev`` whose bytes in ``root`` differ from ``rev`` (or are missing).

    Compares blob hashes (``git ls-tree`` vs ``git hash-object``) rather than asking
    ``git status``, which is wrong in DVC's temporary experiment workspaces. Paths
    equal to or under an ``ignore`` entry are skipped.
    """
    expected: dict[str, str] = {}
    for entry in git_output(root, "ls-tree", "-r", "-z", rev).split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob" and parts[0] != "120000":
            if not any(path == i or path.startswith(i.rstrip("/") + "/") for i in ignore):
                expected[path] = parts[2]
    present = [p for p in expected if (root / p).is_file()]
    hashes = git_output(root, "hash-object", "--stdin-paths", stdin="\n".join(present) + "\n")
    actual = dict(zip(present, hashes.split(), strict=False))
    return sorted(p for p, sha in expected.items() if actual.get(p) != sha)


def git_state(
    root: Path, baseline: str | None = None, ignore: tuple[str, ...] = ()
) -> dict[str, str]:
    """Git sha and dirty flag of the workspace ``root``.

    ``baseline`` is the commit the workspace was built from (DVC's
    ``DVC_EXP_BASELINE_REV`` for experiments), default ``HEAD``. ``git.dirty`` is
    ``true`` when a tracked file other than ``params.yaml``, ``dvc.lock`` and the
    ``ignore`` paths (the pipeline's outputs) differs from it; ``git.dirty_files``
    names the first few. ``unknown`` outside a git checkout.
    """
    try:
        sha = git_output(root, "rev-parse", baseline or "HEAD").strip()
        if not sha:
            return {"git.sha": "unknown", "git.dirty": "unknown"}
        changed = changed_files(root, sha, RUN_FILES + tuple(ignore))
    except (OSError, subprocess.TimeoutExpired):
        return {"git.sha": "unknown", "git.dirty": "unknown"}
    state = {"git.sha": sha, "git.dirty": str(bool(changed)).lower()}
    if changed:
        state["git.dirty_files"] = ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else "")
    return state


def _interpolate(text: str, params: Mapping[str, Any]) -> str:
    def lookup(match: re.Match[str]) -> str:
        node: Any = params
        for part in match.group(1).split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ReproduceError(f"dvc.yaml refers to ${{{match.group(1)}}}; params lack it")
            node = node[part]
        return str(node)

    return _VAR.sub(lookup, text)


def declared_outputs(dvc_yaml: Path, params: Mapping[str, Any]) -> list[str]:
    """Every output (``outs``, and stage-level ``metrics`` and ``plots``) of every stage of
    ``dvc_yaml``, with ``${...}`` resolved from ``params`` (the nested config). Empty when
    the file does not exist."""
    return [path for path, _ in _outputs(dvc_yaml, params)]


def measurement_outputs(dvc_yaml: Path, params: Mapping[str, Any]) -> list[str]:
    """The outputs that hold measurements, not artifacts: every stage-level ``metrics`` and
    ``plots`` file, and every out labelled ``measurement`` in ``dvc.yaml`` (host facts).
    Their bytes depend on the machine and the moment, so a rebuild compares them as
    measurements, never as artifacts."""
    return [path for path, measured in _outputs(dvc_yaml, params) if measured]


def host_dependent_metrics(dvc_yaml: Path, params: Mapping[str, Any]) -> list[str]:
    """The measurement outputs (metrics and details files) of the stages that depend on an
    always-changed stage's measurement outputs (the host and board fingerprints): their figures
    belong to the machine that measured them. (The preflight stage is always-changed too, but
    its verdict is the same on every machine, so depending on it says nothing about where a
    figure was measured.)"""
    stages = _stages(dvc_yaml)
    fingerprints = {
        path for stage in stages.values() if stage.get("always_changed")
        for path, _, measured in _stage_outputs(stage, params) if measured
    }  # fmt: skip
    return [
        path
        for stage in stages.values()
        if fingerprints & {_interpolate(str(d), params) for d in stage.get("deps", [])}
        for path, _, measured in _stage_outputs(stage, params)
        if measured
    ]


def _stages(dvc_yaml: Path) -> dict[str, Any]:
    import yaml

    if not dvc_yaml.is_file():
        return {}
    return (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})


def _stage_outputs(
    stage: Mapping[str, Any], params: Mapping[str, Any]
) -> list[tuple[str, str, bool]]:
    """(path, kind, is a measurement) of every output of one stage."""
    outs = []
    for kind in ("outs", "metrics", "plots"):
        for out in stage.get(kind, []):
            path = next(iter(out)) if isinstance(out, dict) else out
            options = (out.get(path) or {}) if isinstance(out, dict) else {}
            measured = kind != "outs" or MEASUREMENT_LABEL in (options.get("labels") or [])
            outs.append((_interpolate(str(path), params), kind, measured))
    return outs


def _outputs(dvc_yaml: Path, params: Mapping[str, Any]) -> list[tuple[str, bool]]:
    return [
        (path, measured)
        for stage in _stages(dvc_yaml).values()
        for path, _, measured in _stage_outputs(stage, params)
    ]
