"""The ``rkpipe`` command: what is not a DVC stage (doctor, params, board, sweep, compare,
reproduce). The stages' own entry points are in ``stages/``.

Stays light: heavy libraries are imported only inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rkpipe.errors import ConfigError, RkpipeError

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
    from rkpipe.secrets import redact_uri
    from rkpipe.tracking import tracking_uri

    params_file = Path(args.params)
    print(f"python          {platform.python_version()} ({sys.executable})")
    print(f"machine         {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs")
    _print_host()
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
    print(f"mlflow uri      {redact_uri(tracking_uri(uri))}")
    return 0


def _print_host() -> None:
    """The CPU and the kernel flags that change measured figures, with their warnings."""
    from rkpipe.hostinfo import describe, fingerprint_id, host_fingerprint, isa_warnings

    try:
        host = host_fingerprint(threads=os.cpu_count() or 1)
    except RkpipeError as exc:
        print(f"host            unknown: {exc}")
        return
    print(f"host            {fingerprint_id(host)}: {describe(host)}")
    for warning in isa_warnings(host):
        print(f"  warning       {warning}")


def params(args: argparse.Namespace) -> int:
    """Compose conf/ (with overrides) into params.yaml, print it, list the options, or check."""
    from rkpipe.config import compose, compose_yaml

    config_dir = Path(args.config_dir)
    if args.multirun:
        raise ConfigError("params.yaml holds one variant; run a sweep with `rkpipe sweep "
                          f"{' '.join(args.overrides) or 'quant=a,b'}`")  # fmt: skip
    if args.list is not None:
        return _list_options(config_dir, args.list)
    text = compose_yaml(config_dir, args.overrides)
    composed = compose(config_dir, args.overrides)  # validates
    if args.show or args.output == "-":
        print(text, end="")
        return 0
    target = Path(args.output)
    if args.check:
        return _check_params(target, text, composed, config_dir, args.strict)
    from rkpipe.io import write_text_atomic

    write_text_atomic(target, text)
    print(f"wrote {target}")
    return 0


def _list_options(config_dir: Path, group: str) -> int:
    from rkpipe.config.catalog import describe_group, describe_groups

    try:
        print(describe_group(config_dir, group) if group else describe_groups(config_dir))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def _check_params(target: Path, text: str, composed: Any, config_dir: Path, strict: bool) -> int:
    """0 when ``target`` equals what conf/ composes, or (unless ``strict``) when it is a valid
    variant of it, as ``dvc exp run -S`` writes; the differing values are listed either way."""
    from rkpipe.config import flatten, load_params
    from rkpipe.config.loader import config_dict

    if not target.is_file():
        print(f"{target} is missing; compose it with: rkpipe params")
        return 1
    if target.read_text(encoding="utf-8") == text:
        print(f"{target} is up to date with {config_dir}/")
        return 0
    try:
        ours = flatten(config_dict(load_params(target)))
    except ConfigError as exc:
        print(f"{target} is not a valid config: {exc}\nre-compose it with: rkpipe params")
        return 1
    base = flatten(config_dict(composed))
    changed = sorted(k for k in set(ours) | set(base) if ours.get(k) != base.get(k))
    for key in changed:
        print(f"  {key}: {base.get(key)!r} in {config_dir}/ -> {ours.get(key)!r} in {target}")
    if strict or not changed:
        print(f"{target} differs from what {config_dir}/ composes; run `rkpipe params`")
        return 1
    print(f"{target} is a valid variant of {config_dir}/ ({len(changed)} value(s) differ, as "
          f"`dvc exp run -S` writes them); `rkpipe params` returns it to the defaults")  # fmt: skip
    return 0


def board(args: argparse.Namespace) -> int:
    """``rkpipe board trust|check NAME``: accept a board's host key, or preflight it."""
    from rkpipe.config import compose

    cfg = compose(Path(args.config_dir), [f"board={args.name}", *args.overrides])
    if args.action == "trust":
        from rkpipe.board.host_keys import trust_host

        print(f"trusted {cfg.board.host}:{cfg.board.port}: {trust_host(cfg.board)}")
        return 0
    from rkpipe.board.deploy import check_board
    from rkpipe.board.transport import make_transport

    facts = check_board(cfg, make_transport(cfg.board))
    for key, value in facts.items():
        print(f"{key:18} {value}")
    return 0


def _repo(args: argparse.Namespace) -> Path:
    from rkpipe.workspace import repo_root

    return Path(args.repo).resolve() if args.repo else repo_root()


def _store(args: argparse.Namespace, cfg: Any = None) -> Any:
    """The store ``--tracking-uri`` names, else the one the variants' config (or the repo's
    params.yaml) names, e.g. with ``tracking=server``, else the project's embedded store."""
    from rkpipe.team_commands import params_tracking
    from rkpipe.tracking.store import Store

    repo = _repo(args)
    settings = cfg.tracking if cfg is not None else params_tracking(repo)
    return Store(args.tracking_uri or settings.uri, repo)


def _executor(args: argparse.Namespace, repo: Path) -> Any:
    from rkpipe.sweep.executor import DvcQueueExecutor, DvcWorkspaceExecutor

    if args.executor == "workspace":
        return DvcWorkspaceExecutor(repo)
    return DvcQueueExecutor(repo, jobs=args.jobs, prime=not args.no_prime)


def sweep(args: argparse.Namespace) -> int:
    """Plan the sweep, print what runs and what is skipped (and why), then run it."""
    from rkpipe.sweep.plan import describe, plan_sweep

    repo, config_dir = _repo(args), Path(args.config_dir)
    if args.sweeper == "optuna":
        return _search(args, repo, config_dir)
    plan = plan_sweep(args.overrides, config_dir)
    print(describe(plan))
    _warn_shared_board(args, plan)
    if args.dry_run:
        return 0
    from rkpipe.sweep.driver import render_summary, run_sweep

    base = plan.variants[0].cfg if plan.variants else None
    report_dir = Path(args.report_dir) if args.report_dir else None
    if report_dir is None and base is not None:
        report_dir = repo / base.paths.reports_dir / "sweep"
    store = _store(args, base)
    result = run_sweep(repo, plan, _executor(args, repo), store, args.name, report_dir)
    print(render_summary(result))
    return 0 if result.ok else 1


def _warn_shared_board(args: argparse.Namespace, plan: Any) -> None:
    """Parallel jobs on this host disturb a board=local benchmark's timings."""
    local = any(v.cfg.board.transport == "local" for v in plan.variants)
    if args.executor == "queue" and args.jobs > 1 and local:
        print(
            f"warning: -j {args.jobs} with board=local: benchmarks take turns on this host, "
            "but other variants' build stages run beside them and disturb TTFT and tokens/s "
            "(use -j 1 for figures)",
            file=sys.stderr,
        )


def _search(args: argparse.Namespace, repo: Path, config_dir: Path) -> int:
    from rkpipe.sweep.search import Objective, run_search

    chosen = args.objective or ["ppl_delta_pct:minimize", "decode_tok_per_s:maximize"]
    objectives = [Objective.parse(o) for o in chosen]
    parent, plan, children, out = run_search(
        repo, config_dir, args.overrides, _executor(args, repo), _store(args), objectives,
        args.n_trials, args.seed, args.name, Path(args.report_dir) if args.report_dir else None,
    )  # fmt: skip
    print(f"optuna search: parent run {parent}, {len(children)} variant(s) run, "
          f"{len(plan.rejected)} invalid trial(s) skipped")  # fmt: skip
    print((out / "optimization_results.yaml").read_text(encoding="utf-8"))
    return 0


def _compare_runs(args: argparse.Namespace, store: Any) -> tuple[list[Any], int]:
    if args.sweep:
        runs = store.children(args.sweep)
        if not runs:
            from rkpipe.errors import TrackingError

            raise TrackingError(f"run {args.sweep} has no child runs (is it a sweep's parent?)")
    else:
        ids = ([args.baseline] if args.baseline else []) + args.candidate + args.runs
        runs = [store.get(run_id) for run_id in ids]
    baseline = 0
    if args.baseline and args.sweep:
        baseline = next((i for i, r in enumerate(runs) if r.run_id == args.baseline), 0)
    return runs, baseline


def compare(args: argparse.Namespace) -> int:
    """Print (or write) the comparison table; tag gate results on the runs."""
    from rkpipe.config import compose
    from rkpipe.report.compare import compare_runs, gate_tags

    store = _store(args)
    runs, baseline = _compare_runs(args, store)
    if len(runs) < 1:
        raise ConfigError(
            "nothing to compare: give run ids, --sweep PARENT or --baseline/--candidate"
        )
    gates = compose(Path(args.config_dir), args.set).gates
    rules = gates.rules if gates.enabled else {}
    comparison = compare_runs(runs, baseline=baseline, rules=rules)
    text = comparison.to_csv() if args.format == "csv" else comparison.to_markdown()
    _write_or_print(text, args.output)
    if args.csv:
        _write_or_print(comparison.to_csv(), args.csv)
    if args.plot:
        from rkpipe.report.pareto import plot_pareto

        print(f"wrote {plot_pareto(comparison, Path(args.plot)) or 'no plot (missing metrics)'}")
    if rules and not args.no_tag:
        for row in comparison.rows:
            store.set_tags(row.run_id, gate_tags(row.gates))
    return 0


def _write_or_print(text: str, path: str | None) -> None:
    if not path:
        print(text, end="")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def reproduce(args: argparse.Namespace) -> int:
    """Rebuild a run's variant in a clean worktree and report what matches."""
    from rkpipe.reproduce import render_result
    from rkpipe.reproduce import reproduce as rebuild

    result = rebuild(
        args.run_id, _repo(args), _store(args),
        workdir=Path(args.workdir).resolve() if args.workdir else None,
        allow_dirty=args.allow_dirty, keep=args.keep, pull=False if args.rebuild else None,
    )  # fmt: skip
    print(render_result(result, args.verbose))
    if args.keep:
        print(f"worktree kept at {result.worktree}")
    return 0 if result.ok else 1


def sync(args: argparse.Namespace) -> int:
    """Replay the tracking journals into the server (see rkpipe.team_commands)."""
    from rkpipe.team_commands import sync as replay

    return replay(args, _repo(args))


def fetch(args: argparse.Namespace) -> int:
    """Copy a run's model by reference (see rkpipe.team_commands)."""
    from rkpipe.team_commands import fetch as copy_model

    return copy_model(args, _repo(args), _store(args))


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="the DVC/git repository (default: DVC_ROOT or the git top level)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else tracking.uri of the config or "
        "params.yaml, else <repo>/.mlflow/mlflow.db)",
    )


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "sweep", "run a Hydra sweep of variants as DVC experiments")
    p.add_argument(
        "overrides",
        nargs="+",
        help="Hydra overrides with sweeps: quant=a,b "
        "'quant=glob(ort_*)' 'bench.threads=range(1,3)' experiment=smoke",
    )
    p.add_argument("--executor", choices=["queue", "workspace"], default="queue",
                   help="queue: `dvc queue` workers (-j); workspace: one `dvc exp run` after "
                   "another in this checkout")  # fmt: skip
    p.add_argument("-j", "--jobs", type=int, default=1, help="dvc queue workers")
    p.add_argument(
        "--no-prime",
        action="store_true",
        help="queue every job at once (default: the first runs alone, so the stages "
        "all variants share are computed once and restored from the run cache)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--name", help="the parent run's name")
    p.add_argument(
        "--report-dir",
        help="where compare.md/.csv and pareto.png go (default: <reports_dir>/sweep)",
    )
    p.add_argument(
        "--sweeper",
        choices=["basic", "optuna"],
        default="basic",
        help="basic: every combination; optuna: a search over --n-trials",
    )
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help="optuna: METRIC:minimize|maximize (repeat; default ppl_delta_pct:minimize "
        "and decode_tok_per_s:maximize)",
    )
    p.add_argument("--n-trials", type=int, default=8, help="optuna: number of trials")
    p.add_argument("--seed", type=int, default=0, help="optuna: sampler seed")
    _add_config_dir(p)
    _add_store_args(p)
    p.set_defaults(func=sweep)


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "compare", "compare runs, a sweep, or a baseline and candidates")
    p.add_argument("runs", nargs="*", help="run ids (the first is the baseline)")
    p.add_argument("--sweep", help="a sweep's parent run id: compare its children")
    p.add_argument("--baseline", help="the reference run id")
    p.add_argument("--candidate", action="append", default=[], help="a run id to compare")
    p.add_argument("--format", choices=["md", "csv"], default="md", help="table format")
    p.add_argument("--output", help="write the table here instead of printing it")
    p.add_argument("--csv", help="also write the CSV here")
    p.add_argument("--plot", help="also write the Pareto PNG here")
    p.add_argument("--no-tag", action="store_true", help="do not tag gate results in MLflow")
    p.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        help="Hydra override for the gates, e.g. gates.rules.ppl.max=10",
    )
    _add_config_dir(p)
    _add_store_args(p)
    p.set_defaults(func=compare)


def _add_reproduce_parsers(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "reproduce", "rebuild a run's variant and compare hashes and metrics")
    p.add_argument("run_id", help="the MLflow run id of the variant")
    p.add_argument("--workdir", help="where to put the worktree (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the worktree afterwards")
    p.add_argument("--verbose", action="store_true", help="list every timing metric")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild every stage, even those whose outputs the DVC remote holds "
        "(default: pull those, rebuild the rest)",
    )
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="rebuild from the commit even if the run's tree was dirty",
    )
    _add_store_args(p)
    p.set_defaults(func=reproduce)


DESCRIPTION = """\
rkpipe: turn a Hugging Face model into a measured, deployable Rockchip NPU model.
The pipeline itself runs with "dvc repro" (stages in dvc.yaml); this command does the rest:
compose the config, check the machine and boards, run sweeps, compare and reproduce runs."""
EPILOG = """\
examples:
  rkpipe params --list quant           the quantization schemes, one line each
  rkpipe params quant=w8a8 platform=rk3588 && dvc repro
  rkpipe sweep quant=ort_int8,ort_int4_b32 --dry-run
  rkpipe compare --sweep <parent run id>
run "rkpipe COMMAND -h" for a command's options and examples."""
EXAMPLES = {
    "doctor": "rkpipe doctor\nrkpipe doctor --params exp/params.yaml",
    "params": "rkpipe params quant=w8a8 platform=rk3576     # writes params.yaml\n"
              "rkpipe params --show asr=whisper_tiny_random  # prints, writes nothing\n"
              "rkpipe params --list                          # the config groups\n"
              "rkpipe params --list quant                    # a group's options\n"
              "rkpipe params --check                         # is params.yaml current?",
    "board": "rkpipe board trust rk3588_ssh\nrkpipe board check rk3588_ssh quant=w8a8",
    "sweep": "rkpipe sweep quant=ort_int8,ort_int4_b32 --dry-run\n"
             "rkpipe sweep 'quant=glob(ort_*)' experiment=smoke -j 1",
    "compare": "rkpipe compare --sweep <parent run id> --plot pareto.png\n"
               "rkpipe compare --baseline <run id> --candidate <run id> -S gates.rules.ppl.max=10",
    "reproduce": "rkpipe reproduce <run id>           # pulls what the DVC remote holds\n"
                 "rkpipe reproduce <run id> --rebuild # every stage from scratch\n"
                 "rkpipe reproduce <run id> --keep --workdir /tmp/rep",
    "fetch": "rkpipe fetch <run id>                  # the deployable LLM\n"
             "rkpipe fetch <run id> --model asr -o asr_model",
    "sync": "rkpipe sync                      # into params.yaml's tracking.uri\n"
            "rkpipe sync --tracking-uri http://mlflow.lan:5000",
}  # fmt: skip


def _subparser(sub: argparse._SubParsersAction, name: str, help_text: str):
    """A subcommand whose -h ends with its examples (kept as written)."""
    return sub.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name].splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def _add_config_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", default="conf", metavar="DIR",
                   help="the Hydra config directory (default: conf)")  # fmt: skip


def _add_params_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "params", "compose conf/ into params.yaml (the file DVC's stages read)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. quant=w8a8 platform=rk3576")
    _add_config_dir(p)
    p.add_argument(
        "--output",
        default="params.yaml",
        metavar="FILE",
        help="where to write (default: params.yaml; '-' prints to stdout)",
    )
    p.add_argument(
        "--show", action="store_true", help="print the resolved config instead of writing it"
    )
    p.add_argument(
        "--list",
        nargs="?",
        const="",
        metavar="GROUP",
        help="list the config groups, or GROUP's options with their descriptions",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="say whether params.yaml matches conf/ (a valid variant written by "
        "`dvc exp run -S` passes, its differences listed); exit 1 if stale",
    )
    p.add_argument(
        "--strict", action="store_true", help="with --check: any difference from conf/ fails"
    )
    p.add_argument("-m", "--multirun", action="store_true",
                   help="not supported here: sweeps run with `rkpipe sweep`")  # fmt: skip
    p.set_defaults(func=params)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rkpipe", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"rkpipe {_version('rkpipe')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _subparser(sub, "doctor", "report versions, the host CPU, toolkits and the tracking URI")
    p.add_argument(
        "--params",
        default="params.yaml",
        metavar="FILE",
        help="the params file to read the toolkit and tracking settings from",
    )
    p.set_defaults(func=doctor)
    _add_params_parser(sub)
    p = _subparser(sub, "board", "trust a board's SSH host key, or preflight a board")
    p.add_argument(
        "action",
        choices=["trust", "check"],
        help="trust: record the host key; check: reachability, SoC, runtime, disk",
    )
    p.add_argument("name", help="a conf/board/<name>.yaml")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides (quant=..., platform=...)")
    _add_config_dir(p)
    p.set_defaults(func=board)
    _add_sweep_parser(sub)
    _add_compare_parser(sub)
    _add_reproduce_parsers(sub)
    from rkpipe.team_commands import add_fetch_parser, add_sync_parser

    add_sync_parser(sub, _subparser).set_defaults(func=sync)
    fetch_parser = add_fetch_parser(sub, _subparser)
    _add_store_args(fetch_parser)
    fetch_parser.set_defaults(func=fetch)
    return parser


def _suggest_command(argv: list[str]) -> str | None:
    """``did you mean 'params'?`` when the first word is close to a subcommand's name."""
    from rkpipe.config.catalog import closest

    words = [a for a in argv if not a.startswith("-")]
    commands = list(EXAMPLES)
    if not words or words[0] in commands:
        return None
    match = closest(words[0], commands)
    if match is None:
        return None
    return f"rkpipe: error: unknown command {words[0]!r}; did you mean {match!r}?"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rkpipe`` console script."""
    parser = build_parser()
    suggestion = _suggest_command(sys.argv[1:] if argv is None else argv)
    if suggestion:
        print(suggestion, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RkpipeError as exc:
        print(f"rkpipe {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
