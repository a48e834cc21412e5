"""What a tracking-server outage costs a stage, side by side in one run (issue "a team's setup").

A stage (``stage_run`` logging params, the headline figures and an artifact, as the pipeline's
stages do) runs three ways against a real ``mlflow server`` on a loopback port:

- ``up``: the server answers;
- ``down``: the port is closed from the start (the stage journals everything);
- ``killed``: the server is SIGKILLed while the stage works (it journals from then on).

Per way: the stage's wall time, its extra time over ``up`` (the bound is ``tracking.timeout_s``,
default 10 s), the journal entries written, and then what ``rkpipe sync`` replays into the
restarted server. The target: the extra time is at most ``tracking.timeout_s`` plus 1 s.

    python benchmarks/tracking_outage.py [--timeout-s 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.measure.figures import log_figures
    from rkpipe.tracking import stage_run
    conf, uri, timeout, experiment = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    cfg = compose(Path(conf), ["tracking=server", f"tracking.uri={uri}",
                               f"tracking.timeout_s={timeout}",
                               f"tracking.experiment={experiment}"])
    Path("details.json").write_text('{"ppl": 30.5}')
    start = time.monotonic()
    with stage_run(cfg, "evaluate") as run:
        opened = time.monotonic() - start
        print("ready", flush=True)
        while not Path("go").exists():
            time.sleep(0.02)
        go = time.monotonic()
        log_figures(run, "evaluate", {"ppl": 30.5, "kld_mean": 0.08, "eval_windows": 4})
        run.log_artifact(Path("details.json"), "metrics")
    print(f"stage_s {opened + time.monotonic() - go:.3f}", flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts"],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.3)
    raise SystemExit("mlflow server did not start within 120 s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def one_stage(work: Path, uri: str, timeout_s: float, experiment: str, kill=None) -> float:
    """The stage's own time: opening the run, logging and closing it (Python's start-up and
    the wait for ``go`` excluded)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"DVC_ROOT": str(work), "RKPIPE_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(work / "stage.py"), str(ROOT / "conf"), uri, str(timeout_s),
         experiment],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"stage did not start: {line} {proc.stderr.read()[-2000:]}")
    if kill:
        kill()
    (work / "go").touch()
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"stage failed:\n{err[-3000:]}")
    return float(out.split("stage_s")[-1].split()[0])


def journal_entries(work: Path) -> int:
    return len(list((work / ".dvc" / "tmp" / "rkpipe" / "journal").rglob("[0-9]*.json")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from rkpipe.hostinfo import host_fingerprint

    cpu = host_fingerprint(1)["cpu"]
    print(f"CPU: {cpu['model']}, {cpu['logical_cores']} cores, ISA {' '.join(cpu['isa'])}")
    times: dict[str, list[float]] = {"up": [], "down": [], "killed": []}
    journaled: dict[str, int] = {}
    replayed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rkpipe-outage-") as tmp:
        base = Path(tmp)
        for round_ in range(args.rounds):
            for way in times:
                work = base / f"{way}-{round_}"
                store = base / f"store-{way}-{round_}"
                work.mkdir()
                store.mkdir()
                (work / "stage.py").write_text(STAGE)
                port = free_port()
                uri = f"http://127.0.0.1:{port}"
                server = start_server(store, port) if way != "down" else None
                kill = (lambda s=server: stop(s)) if way == "killed" else None
                took = one_stage(work, uri, args.timeout_s, f"{way}-{round_}", kill)
                times[way].append(took)
                journaled[way] = journal_entries(work)
                if way != "up":
                    server = start_server(store, port)
                    sync = subprocess.run(
                        [sys.executable, "-m", "rkpipe.cli", "sync", "--repo", str(work),
                         "--tracking-uri", uri],
                        capture_output=True, text=True, timeout=300,
                        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
                    )  # fmt: skip
                    replayed.append(f"{way}: {sync.stdout.strip()} (exit {sync.returncode})")
                if server:
                    stop(server)
    up = statistics.median(times["up"])
    print(f"tracking.timeout_s = {args.timeout_s:g}; medians of {args.rounds} round(s)")
    print("| way | stage s | extra over up, s | journal entries |")
    print("|---|---:|---:|---:|")
    for way, samples in times.items():
        median = statistics.median(samples)
        print(f"| {way} | {median:.2f} | {median - up:+.2f} | {journaled[way]} |")
    for line in replayed:
        print(line)
    worst = max(statistics.median(times[w]) - up for w in ("down", "killed"))
    verdict = "PASS" if worst <= args.timeout_s + 1.0 else "FAIL"
    print(f"target: extra <= timeout_s + 1 s: worst {worst:.2f} s -> {verdict}")


if __name__ == "__main__":
    main()
