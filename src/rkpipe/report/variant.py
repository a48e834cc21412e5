"""The ``report`` stage's inputs: every metrics file, where each was measured, and the gates.

Each measuring stage writes its figures with a ``provenance`` object (see
:func:`rkpipe.hostinfo.provenance`); they are kept apart here, per stage, so the report can say
which host measured which figure and flag a report that mixes two hosts. The acceptance gates
(``conf/gates``) run on every variant here, not only in ``rkpipe compare``; a variant that
``evaluate`` kept although broken (``llm_broken``) fails the built-in ``broken`` gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rkpipe.report import ReportContext
from rkpipe.report.compare import evaluate_gates, gate_tags, gate_verdict


def read_metrics(metrics_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Merged figures of every stage's details file (see :mod:`rkpipe.measure.figures`), and
    ``{stage: provenance}``."""
    from rkpipe.measure.figures import PROVENANCE, read_details

    metrics: dict[str, Any] = {}
    provenance: dict[str, dict[str, str]] = {}
    for name, data in read_details(metrics_dir).items():
        if isinstance(data.get(PROVENANCE), dict):
            provenance[_stage_of(name)] = data.pop(PROVENANCE)
        metrics.update(data)
    return metrics, provenance


def _stage_of(stem: str) -> str:
    return {"bench": "deploy_bench"}.get(stem, stem)


def judge(metrics: Mapping[str, Any], rules: Mapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(verdict, what failed, MLflow tags): ``broken`` / ``failed`` / ``passed`` / ``n/a``
    (the same verdict ``rkpipe compare`` gives the run)."""
    results = evaluate_gates(metrics, rules)
    failed = "; ".join(r.explain() for r in results if r.passed is False)
    return gate_verdict(results), failed, gate_tags(results)


def report_context(
    cfg: Any, metrics: Mapping[str, Any], provenance: Mapping[str, Mapping[str, str]],
    run_id: str, root: Path,
) -> tuple[ReportContext, dict[str, str]]:  # fmt: skip
    """The report's context and the gate tags for the variant's run."""
    from rkpipe.workspace import git_output

    rules = cfg.gates.rules if cfg.gates.enabled else {}
    verdict, notes, tags = judge(metrics, rules)
    remote = bool((provenance.get("deploy_bench") or {}).get("board_id"))
    layout = cfg.layout
    versions = _versions(layout.board_fingerprint if remote else layout.host_fingerprint)
    ctx = ReportContext(
        provenance=dict(provenance), verdict=verdict, gate_notes=notes,
        git_sha=git_output(root, "rev-parse", "HEAD").strip() or "unknown", run_id=run_id,
        versions=versions,
    )  # fmt: skip
    return ctx, tags


def _versions(path: Path) -> dict[str, str]:
    """The runtimes' versions where the speed was measured (the board's or this host's file)."""
    from rkpipe.io import read_json

    try:
        return dict(read_json(path).get("versions") or {})
    except (OSError, ValueError):
        return {}
