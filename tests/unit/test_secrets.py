"""Credentials never reach a stage's log: URI userinfo and secret environment values are masked
in log records, library warnings, tracebacks and the one-line error."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from rkpipe.secrets import redact_text
from rkpipe.stage import configure_logging

SECRET = "pl4nted-" + "s3cret-value"  # built, so no source file holds it whole
REPO = Path(__file__).resolve().parents[2]


def test_redact_text_masks_uri_credentials_and_secret_env_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    text = f"retrying https://bob:{SECRET}@hub.example/api with hf_abcdefghijklmnop"
    clean = redact_text(text)
    assert SECRET not in clean and "hf_abcdefghijklmnop" not in clean
    assert "https://***@hub.example/api" in clean


def test_library_logs_and_warnings_are_masked(capsys, monkeypatch):
    monkeypatch.setenv("RKPIPE_LOG_LEVEL", "DEBUG")
    configure_logging()
    try:
        # what the datasets library printed with HF_ENDPOINT=https://user:pass@host
        logging.getLogger("datasets.utils.file_utils").warning(
            "Couldn't reach https://user:%s@127.0.0.1:9/api (error 503), retrying", SECRET
        )
        warnings.warn(f"slow endpoint https://user:{SECRET}@127.0.0.1:9", stacklevel=1)
        try:
            raise ConnectionError(f"https://user:{SECRET}@127.0.0.1:9 refused")
        except ConnectionError:
            logging.getLogger("rkpipe.stage").debug("failed", exc_info=True)
    finally:
        logging.captureWarnings(False)
    captured = capsys.readouterr()
    printed = captured.out + captured.err  # rich's console writes to stdout
    assert printed.count("127.0.0.1:9") >= 3  # the records were printed ...
    assert SECRET not in printed  # ... without the password


def test_a_stage_error_line_is_masked(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    script = tmp_path / "stage.py"
    script.write_text(
        "from rkpipe.errors import TrackingError\n"
        "from rkpipe.stage import run_stage\n"
        "def body(cfg, run):\n"
        f"    raise TrackingError('server https://u:{SECRET}@127.0.0.1:9 is down')\n"
        "run_stage('probe', body, tracked=False)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "rkpipe probe: error: server https://***@127.0.0.1:9 is down"
