"""``rkpipe sync`` (and the team's other shared-store commands): kept out of :mod:`rkpipe.cli`,
which only registers them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def params_tracking(root: Path) -> Any:
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

    settings = params_tracking(root)
    uri = args.tracking_uri or tracking_uri(settings.uri, root)
    if not pending_count(root):
        print(f"nothing journaled under {journal_root(root)}")
        return 0
    done = replay_journals(make_client(uri, settings.timeout_s), root)
    print(
        f"replayed {done.applied} journaled call(s) into {done.runs} run(s) on "
        f"{redact_uri(uri)} ({done.skipped} were there already)"
    )
    for line in done.unreadable:
        print(line, file=sys.stderr)
    for journal in journals(root):  # what is left belongs to another store
        if journal.entries():
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


def fetch(args: argparse.Namespace, root: Path, store: Any) -> int:
    """Copy a run's model, by its recorded md5, from the DVC cache or remote to a path."""
    from rkpipe.reproduce.fetch import fetch_model, pick_reference, run_references

    reference = pick_reference(run_references(store, args.run_id), args.model)
    name = str(reference["path"]).split("/", 1)[-1].replace("/", "-")
    out = Path(args.output or f"{args.run_id[:8]}-{name}")
    fetched = fetch_model(root, reference, out.resolve())
    size = f"{reference['size'] / 1e6:.1f} MB" if reference.get("size") else "size unknown"
    print(
        f"fetched {reference['path']} of run {args.run_id} (md5 {reference['md5']}, {size}) "
        f"from {fetched.source} into {out}"
    )
    return 0


def add_fetch_parser(sub: argparse._SubParsersAction, subparser: Any) -> argparse.ArgumentParser:
    """Register ``rkpipe fetch``."""
    p = subparser(sub, "fetch", "copy a run's model, checked against its md5, to a path")
    p.add_argument("run_id", help="the MLflow run id of the variant")
    p.add_argument(
        "--model",
        default="llm",
        help="llm or asr (the deployable quantized model), or a path such as llm/onnx_fp32 "
        "(default: llm)",
    )
    p.add_argument("-o", "--output", help="where to put it (default: ./<run id[:8]>-llm-quantized)")
    return p
