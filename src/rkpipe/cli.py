"""The ``rkpipe`` command: what is not a DVC stage (doctor, params, ...).

Stays light: heavy libraries are imported only inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from rkpipe.errors import RkpipeError

KEY_PACKAGES = (
    "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime", "gguf", "datasets",
    "huggingface-hub", "mlflow", "dvc", "hydra-core", "jiwer",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def rkllm_interpreter(params_file: Path) -> str:
    """The interpreter that should run rkllm-toolkit: ``RKPIPE_RKLLM_PYTHON``, else
    ``quant.rkllm.python`` from params.yaml, else this interpreter."""
    if os.environ.get("RKPIPE_RKLLM_PYTHON"):
        return os.environ["RKPIPE_RKLLM_PYTHON"]
    if params_file.is_file():
        from rkpipe.config import load_params

        configured = load_params(params_file).quant.rkllm.python
        if configured:
            return configured
    return sys.executable


def _toolkit_status(python: str) -> str:
    probe = "import importlib.metadata as m, rkllm.api; print(m.version('rkllm-toolkit'))"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}"
    if out.returncode == 0:
        return f"importable (rkllm-toolkit {out.stdout.strip()})"
    return "not importable (install Rockchip's rkllm-toolkit wheel in its own venv)"


def doctor(args: argparse.Namespace) -> int:
    """Print the environment facts that decide whether the pipeline can run."""
    from rkpipe.tracking import tracking_uri

    params_file = Path(args.params)
    print(f"python          {platform.python_version()} ({sys.executable})")
    print(f"machine         {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs")
    for package in KEY_PACKAGES:
        print(f"{package:15} {_version(package)}")
    python = rkllm_interpreter(params_file)
    print(f"rkllm python    {python}: {_toolkit_status(python)}")
    for tool in ("espeak-ng", "sox", "sshd"):
        print(f"{tool:15} {shutil.which(tool) or 'missing'}")
    uri = None
    if params_file.is_file():
        from rkpipe.config import load_params

        uri = load_params(params_file).tracking.uri
    print(f"mlflow uri      {tracking_uri(uri)}")
    return 0


def params(args: argparse.Namespace) -> int:
    """Compose conf/ (with overrides) into params.yaml, or check it is up to date."""
    from rkpipe.config import compose, compose_yaml

    text = compose_yaml(Path(args.config_dir), args.overrides)
    compose(Path(args.config_dir), args.overrides)  # validates
    target = Path(args.output)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current == text:
            print(f"{target} is up to date with {args.config_dir}/")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(), text.splitlines(), str(target), "composed", lineterm=""
        )
        print("\n".join(diff))
        print(f"{target} differs from what {args.config_dir}/ composes; run `rkpipe params`")
        return 1
    from rkpipe.io import write_text_atomic

    write_text_atomic(target, text)
    print(f"wrote {target}")
    return 0


def board(args: argparse.Namespace) -> int:
    """``rkpipe board trust|check NAME``: accept a board's host key, or preflight it."""
    from rkpipe.config import compose

    cfg = compose(Path(args.config_dir), [f"board={args.name}", *args.overrides])
    if args.action == "trust":
        from rkpipe.board.ssh import trust_host

        print(f"trusted {cfg.board.host}:{cfg.board.port}: {trust_host(cfg.board)}")
        return 0
    from rkpipe.board.deploy import check_board, make_transport

    facts = check_board(cfg, make_transport(cfg.board))
    for key, value in facts.items():
        print(f"{key:18} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="rkpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="report versions, toolkit interpreter and tracking URI")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=doctor)
    p = sub.add_parser("params", help="compose conf/ into params.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. quant=w8a8 platform=rk3576")
    p.add_argument("--config-dir", default="conf")
    p.add_argument("--output", default="params.yaml")
    p.add_argument("--check", action="store_true", help="exit 1 if params.yaml is stale")
    p.set_defaults(func=params)
    p = sub.add_parser("board", help="trust a board's SSH host key, or preflight a board")
    p.add_argument("action", choices=["trust", "check"])
    p.add_argument("name", help="a conf/board/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides (quant=..., platform=...)")
    p.add_argument("--config-dir", default="conf")
    p.set_defaults(func=board)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rkpipe`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RkpipeError as exc:
        print(f"rkpipe {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
