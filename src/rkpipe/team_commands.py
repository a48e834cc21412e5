"""``rkpipe sync`` (and the team's other shared-store commands): kept out of :mod:`rkpipe.cli`,
which only registers them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _params_tracking(root: Path) -> Any:
    """The tracking settings of ``<root>/params.yaml`` (the defaults without one)."""
    from rkpipe.config import load_params
    from rkpipe.config.schema import TrackingConfig

    params = root / "params.yaml"
    return load_params(params).tracking if params.is_file() else TrackingConfig()


def sync(args: argparse.Namespace, root: Path) -> int:
    """Replay the journals a tracking-server outage left; exit 1 while any entry is left."""
    from rkpipe.secrets import redact_uri
    from rkpipe.tracking import make_client, tracking_uri
    from rkpipe.tracking.journal import journal_root, journals, pending_count
    from rkpipe.tracking.sync import replay_journals

    settings = _params_tracking(root)
    uri = args.tracking_uri or tracking_uri(settings.uri, root)
    if not pending_count(root):
        print(f"nothing journaled under {journal_root(root)}")
        return 0
    done = replay_journals(make_client(uri, settings.timeout_s), root)
    print(
        f"replayed {done.applied} journaled call(s) into {done.runs} run(s) on "
        f"{redact_uri(uri)} ({done.skipped} were there already)"
    )
    for journal in journals(root):  # what is left belongs to another store
        print(f"left: {journal.folder} (for {journal.store}; run sync with --tracking-uri)")
    return 1 if pending_count(root) else 0


def add_sync_parser(sub: argparse._SubParsersAction, subparser: Any) -> argparse.ArgumentParser:
    """Register ``rkpipe sync`` (``subparser`` adds the shared examples epilog)."""
    p = subparser(sub, "sync", "replay what stages journaled while the tracking server was down")
    p.add_argument("--repo", help="the DVC/git repository (default: DVC_ROOT or the git top level)")
    p.add_argument(
        "--tracking-uri",
        help="the MLflow server to replay into (default: MLFLOW_TRACKING_URI, else params.yaml)",
    )
    return p
