"""Runs and files that survive kills and outages, with real MLflow: a tracking server that is
unreachable or dies mid-stage costs at most ``tracking.timeout_s`` and one line, never the
stage's metrics; a SIGKILLed stage's run is closed as KILLED and its history keeps the kill;
the temporaries of a killed writer are removed by the next one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from rkpipe.config import compose, variant_id
from rkpipe.errors import TrackingError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TIMEOUT_S = 3.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def silent_listener():
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in [*held, server]:
        conn.close()


def _check_fails(uri: str) -> str:
    from rkpipe.tracking import check_tracker

    start = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracker(uri, TIMEOUT_S)
    assert time.monotonic() - start < TIMEOUT_S + 2
    message = str(caught.value)
    assert "\n" not in message and "tracking.uri=null" in message
    return message


def test_check_tracker_on_a_closed_port(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = _closed_port()
    message = _check_fails(f"http://127.0.0.1:{port}")
    assert f"http://127.0.0.1:{port}" in message and "refused" in message


def test_check_tracker_on_a_server_that_never_answers(silent_listener, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    message = _check_fails(f"http://user:secret@127.0.0.1:{silent_listener}")
    assert f"http://***@127.0.0.1:{silent_listener}" in message and "secret" not in message


def test_check_tracker_passes_embedded_stores_at_once(monkeypatch):
    from rkpipe.tracking import check_tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    start = time.monotonic()
    check_tracker(None, TIMEOUT_S)
    check_tracker("sqlite:////nonexistent/mlflow.db", TIMEOUT_S)
    assert time.monotonic() - start < 0.5


def test_redact_uri():
    from rkpipe.tracking import redact_uri

    assert redact_uri("https://me:p%40ss@host:5000/x") == "https://***@host:5000/x"
    assert redact_uri("http://host:5000") == "http://host:5000"
    assert "s3cr3t" not in redact_uri("API request to http://a:s3cr3t@h/api failed")


# --------------------------------------------------------------------------- stages


STAGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rkpipe.io import write_json_atomic
    from rkpipe.stage import run_stage

    def body(cfg, run):
        print("ready", flush=True)
        while not Path("go").exists():
            time.sleep(0.05)
        write_json_atomic("metrics.json", {"figure": 1.5})
        run.log_metrics({"figure": 1.5})

    run_stage("evaluate", body)
    """
)


def _workspace(root: Path, uri: str | None, journal: bool = False) -> Path:
    """A stage that waits for ``go``; ``journal=False``: an outage fails it (the journal's
    own tests are in test_journal_replay.py)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"].update(uri=uri, timeout_s=TIMEOUT_S, journal=journal)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "stage.py").write_text(STAGE)
    return root


def _start(root: Path, **extra_env: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"DVC_ROOT": str(root), "PYTHONHASHSEED": "0"} | extra_env
    return subprocess.Popen(
        [sys.executable, "stage.py"], cwd=root, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _one_error_line(stderr: str, uri: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("rkpipe evaluate:")]
    assert len(errors) == 1 and uri in errors[0], stderr
    assert "Traceback" not in stderr and "secret" not in stderr, stderr


def test_stage_fails_in_one_line_when_the_server_is_unreachable(tmp_path):
    port = _closed_port()
    root = _workspace(tmp_path, None)  # params.yaml refuses a password: the environment has it
    (root / "go").touch()
    start = time.monotonic()
    proc = _start(root, MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{port}")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    _one_error_line(stderr, f"http://***@127.0.0.1:{port}")
    assert time.monotonic() - start < TIMEOUT_S + 30  # python and mlflow start-up included


@pytest.fixture()
def mlflow_server(tmp_path):
    """``mlflow server`` on a loopback port (its own process group, stopped after the test)."""
    port = _closed_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--default-artifact-root", str(store / "artifacts")],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(uri, proc)
        yield uri, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait_until_up(uri: str, proc: subprocess.Popen) -> None:
    from rkpipe.tracking import check_tracker

    deadline = time.monotonic() + 120
    while True:
        try:
            return check_tracker(uri, 2.0)
        except TrackingError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_server_dying_mid_stage_keeps_the_metrics_and_ends_in_one_line(tmp_path, mlflow_server):
    uri, server = mlflow_server
    (tmp_path / "ws").mkdir()
    root = _workspace(tmp_path / "ws", uri)
    proc = _start(root)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    start = time.monotonic()
    (root / "go").touch()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert time.monotonic() - start < TIMEOUT_S + 2
    assert (root / "metrics.json").read_text().strip().endswith("}")
    _one_error_line(stderr, uri)


# --------------------------------------------------------------------------- kills

SLEEPER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rkpipe.config import compose
    from rkpipe.tracking import stage_run
    cfg = compose(Path(sys.argv[1]), ["bench.repetitions=5"])
    with stage_run(cfg, "deploy_bench"):
        print("ready", flush=True)
        time.sleep(120)
    """
)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    from rkpipe.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(None, tmp_path))


def _kill_a_stage(root: Path) -> None:
    script = root / "sleeper.py"
    script.write_text(SLEEPER)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(CONF)], stdout=subprocess.PIPE, text=True,
        env=env | {"DVC_ROOT": str(root)},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait(timeout=30)


def _run(client, cfg):
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    query = f"tags.`rkpipe.variant` = '{variant_id(cfg)}'"
    (run,) = client.search_runs([exp.experiment_id], query)
    return run


def test_reconcile_closes_the_run_of_a_sigkilled_stage(store, tmp_path):
    from rkpipe.tracking import dead_markers, reconcile_killed, stage_run

    cfg = compose(CONF, ["bench.repetitions=5"])
    _kill_a_stage(tmp_path)
    assert _run(store, cfg).info.status == "RUNNING"
    assert [m.stage for m in dead_markers(tmp_path)] == ["deploy_bench"]
    assert reconcile_killed(tmp_path, cfg) == 1
    run = _run(store, cfg)
    assert run.info.status == "KILLED"
    assert run.data.tags["rkpipe.stage.deploy_bench.history"] == "killed"
    assert run.data.tags["rkpipe.killed_stage"] == "deploy_bench"
    assert dead_markers(tmp_path) == [] and reconcile_killed(tmp_path, cfg) == 0
    with stage_run(cfg, "report"):
        pass
    run = _run(store, cfg)
    assert run.info.status == "FINISHED"
    assert run.data.tags["rkpipe.stage.deploy_bench.history"] == "killed"
    assert run.data.tags["rkpipe.stage.report.history"] == "finished"


def test_next_stage_reconciles_and_the_history_keeps_the_kill(store, tmp_path):
    from rkpipe.tracking import stage_run

    cfg = compose(CONF, ["bench.repetitions=5"])
    _kill_a_stage(tmp_path)
    with stage_run(cfg, "deploy_bench"):
        pass
    run = _run(store, cfg)
    assert run.info.status == "FINISHED"
    assert run.data.tags["rkpipe.stage.deploy_bench"] == "finished"
    assert run.data.tags["rkpipe.stage.deploy_bench.history"] == "killed,finished"
    assert not list((tmp_path / ".dvc/tmp/rkpipe/running").iterdir())


def test_reconcile_without_dead_markers_does_not_import_mlflow(tmp_path):
    code = (
        "import sys; from pathlib import Path; from rkpipe.config import compose; "
        "from rkpipe.tracking import reconcile_killed; "
        f"assert reconcile_killed(Path({str(tmp_path)!r}), compose(Path({str(CONF)!r}))) == 0; "
        "assert 'mlflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- io


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_next_writer_removes_a_dead_writers_temporary_and_keeps_a_live_ones(tmp_path):
    from rkpipe.io import write_json_atomic
    from rkpipe.processes import host_token

    final = tmp_path / "evaluate.json"
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead_tmp = tmp_path / f".evaluate.json.{host_token()}-{_dead_pid()}.abcd1234.tmp"
        live_tmp = tmp_path / f".evaluate.json.{host_token()}-{live.pid}.efgh5678.tmp"
        other_host = tmp_path / f".evaluate.json.elsewhere-{_dead_pid()}.ijkl9012.tmp"
        old_legacy = tmp_path / ".evaluate.json.mnop3456.tmp"
        new_legacy = tmp_path / ".evaluate.json.qrst7890.tmp"
        for folder in (dead_tmp, live_tmp, other_host, old_legacy, new_legacy):
            (folder / "evaluate.json").mkdir(parents=True)
            (folder / "evaluate.json" / "weights.bin").write_bytes(b"0" * 1024)
        two_days_ago = time.time() - 2 * 86400
        for path in [*old_legacy.rglob("*"), old_legacy]:
            os.utime(path, (two_days_ago, two_days_ago))
        write_json_atomic(final, {"ppl": 1.0})
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"evaluate.json", live_tmp.name, other_host.name, new_legacy.name}
    finally:
        live.kill()
        live.wait()
