"""The MLflow UI shows sweep runs usefully: a real ``mlflow server`` on 127.0.0.1 over a temp
SQLite store holding a sweep parent and two variant runs logged by the tracking layer,
rendered by Debian's headless Chromium.

Checks the compare view twice: the rendered DOM (run names, readable param and metric
names) and a screenshot that must be a real picture, not a blank page. Set
``RKPIPE_UI_SCREENSHOT=<path>`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from rkpipe.config import compose

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
    ),
]
CONF = Path(__file__).resolve().parents[2] / "conf"
VARIANTS = {
    "ort_int8": {"ttft_ms": 95.3, "decode_tok_per_s": 17.1, "peak_rss_mb": 449.4, "ppl": 48.16,
                 "ppl_delta_pct": 66.9, "kld_mean": 0.553, "top1_agreement": 0.58, "asr_wer_delta": 0.0},
    "ort_int8_per_channel": {"ttft_ms": 97.8, "decode_tok_per_s": 16.4, "peak_rss_mb": 452.0,
                             "ppl": 30.9, "ppl_delta_pct": 7.1, "kld_mean": 0.081,
                             "top1_agreement": 0.86, "asr_wer_delta": 0.0},
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_sweep(root: Path) -> tuple[str, list[str], str]:
    """A sweep parent and two children, written the way the pipeline writes them."""
    from rkpipe.measure.figures import log_figures
    from rkpipe.report.compare import evaluate_gates, gate_tags
    from rkpipe.tracking import stage_run
    from rkpipe.tracking.store import Store

    store = Store(root=root)
    base = compose(CONF)
    parent = store.create_run("rkpipe", "sweep|smollm2-135m-instruct|2 variants", {
        "rkpipe.kind": "sweep", "sweep.arguments": "quant=ort_int8,ort_int8_per_channel",
    })  # fmt: skip
    os.environ["RKPIPE_PARENT_RUN_ID"] = parent
    try:
        children = []
        for quant, metrics in VARIANTS.items():
            cfg = compose(CONF, [f"quant={quant}"])
            with stage_run(cfg, "report") as run:
                # as the stages log them: details (percentiles) never, the headline first
                details = {"ttft_ms_p90": 101.0, "ttft_ms_n": 5, "asr_ops.encoder.MatMul": 24}
                log_figures(run, "bench", {**metrics, **details})
                log_figures(run, "evaluate", metrics)
                run.set_tags(gate_tags(evaluate_gates(metrics, base.gates.rules)))
            children.append(run.run_id)
    finally:
        del os.environ["RKPIPE_PARENT_RUN_ID"]
    store.terminate(parent)
    return parent, children, store.experiment_id("rkpipe")


@pytest.fixture()
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent, children, experiment = log_sweep(tmp_path)
    port = free_port()
    store = tmp_path / ".mlflow"
    log = open(tmp_path / "server.log", "w")  # closed below, after the server exits
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--default-artifact-root", (store / "artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, tmp_path / "server.log")
        yield url, parent, children, experiment
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {timeout} s")


def chromium(
    tmp_path: Path, url: str, *mode: str, window: str = "1600,1000"
) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with JS given 15 s of virtual time to render the React app."""
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}",
        f"--window-size={window}", "--virtual-time-budget=15000", *mode, url,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)


def compare_url(base: str, runs: list[str], experiment: str) -> str:
    query = urllib.parse.urlencode(
        {"runs": json.dumps(runs), "experiments": json.dumps([experiment])}
    )
    return f"{base}/#/compare-runs?{query}"


def test_compare_view_shows_runs_params_metrics_and_a_real_screenshot(server, tmp_path):
    url, parent, children, experiment = server
    page = compare_url(url, children, experiment)
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    for text in ("smollm2-135m-instruct|ort int8 dynamic (QInt8, per-tensor)|host|",
                 "smollm2-135m-instruct|ort int8 dynamic (QInt8, per-channel)|host|",
                 "quant.ort.per_channel", "decode_tok_per_s", "ppl_delta_pct"):  # fmt: skip
        assert text in dom, f"{text!r} not rendered in the compare view"
    png = tmp_path / "compare.png"
    out = chromium(tmp_path, page, f"--screenshot={png}")
    assert png.is_file(), out.stderr[-2000:]
    assert png.stat().st_size > 30_000
    _assert_not_blank(png)
    if os.environ.get("RKPIPE_UI_SCREENSHOT"):  # the whole page, for the docs
        full = Path(os.environ["RKPIPE_UI_SCREENSHOT"])
        chromium(tmp_path, page, f"--screenshot={full}", window="1600,2600")


def test_runs_list_shows_distinct_names_and_the_headline_columns(server, tmp_path):
    """The experiment's runs list in rkpipe's shared view (the link the README gives): two
    variants queued with ``dvc exp run --queue`` (top-level runs; a sweep's children are
    collapsed under its parent in this list) by names that tell them apart, and the headline
    figures as columns, with no percentile or op count."""
    from rkpipe.measure.figures import log_figures
    from rkpipe.report.compare import evaluate_gates, gate_tags
    from rkpipe.tracking import stage_run
    from rkpipe.tracking.client import VIEW_KEY

    url, parent, children, experiment = server
    rules = compose(CONF).gates.rules
    for quant, metrics in VARIANTS.items():
        cfg = compose(CONF, [f"quant={quant}", "bench.repetitions=4"])
        with stage_run(cfg, "report") as run:
            log_figures(run, "bench", {**metrics, "ttft_ms_p90": 101.0, "ttft_ms_n": 4})
            run.set_tags(gate_tags(evaluate_gates(metrics, rules)))
    page = f"{url}/#/experiments/{experiment}/runs?viewStateShareKey={VIEW_KEY}"
    # wide: the grid renders only the columns in its viewport
    dom = chromium(tmp_path, page, "--dump-dom", window="3200,1000").stdout
    if os.environ.get("RKPIPE_UI_RUNS_DOM"):
        Path(os.environ["RKPIPE_UI_RUNS_DOM"]).write_text(dom)
    headers = dom[dom.find("Run Name") :]
    for text in ("smollm2-135m-instruct|ort int8 dynamic (QInt8, per-tensor)|host|",
                 "smollm2-135m-instruct|ort int8 dynamic (QInt8, per-channel)|host|",
                 ">ppl_delta_pct<", ">ttft_ms<", ">decode_tok_per_s<", ">gate<"):  # fmt: skip
        assert text in headers, f"{text!r} not rendered in the runs list"
    for detail in ("ttft_ms_p90", "ttft_ms_n", "asr_ops"):
        assert detail not in dom, f"{detail} is a detail, not a metric column"
    png = Path(os.environ.get("RKPIPE_UI_RUNS_SCREENSHOT") or tmp_path / "runs.png")
    out = chromium(tmp_path, page, f"--screenshot={png}")
    assert png.is_file(), out.stderr[-2000:]
    _assert_not_blank(png)


def _assert_not_blank(png: Path) -> None:
    import numpy as np
    from matplotlib import image

    pixels = (image.imread(png)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert pixels.shape[0] == 1600 * 1000 and colours > 50, f"{colours} colours: blank page?"


def test_runs_are_filterable_by_tags_and_nested_under_the_sweep(server):
    url, parent, children, experiment = server
    body = json.dumps({
        "experiment_ids": [experiment],
        "filter": f"tags.`mlflow.parentRunId` = '{parent}' and tags.gate = 'failed' "
                  "and tags.dtype = 'int8' and tags.platform = 'host'",
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.loads(response.read())["runs"]
    assert {r["info"]["run_id"] for r in runs} == set(children)  # both fail the 5 % PPL gate
    tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
    assert tags["gate.failed"] == "ppl" and tags["rkpipe.sweep"] == parent
