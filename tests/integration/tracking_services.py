"""PostgreSQL and ``mlflow server`` from ``scripts/services.sh`` on free loopback ports, for
tests of a team's tracking server, and MLflow's REST API to check what reached it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"
NO_POSTGRES = pytest.mark.skipif(
    not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    reason="Debian's postgresql package is not installed (apt-get install -y postgresql)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def services(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SERVICES), action], env=env, capture_output=True, text=True, timeout=180
    )


@contextlib.contextmanager
def running_services() -> Iterator[tuple[dict[str, str], str, str]]:
    """``(env, tracking uri, what "up" printed)``; everything is stopped and removed after."""
    # the postgres user must reach the data directory: pytest's tmp dirs are 0700
    base = Path(tempfile.mkdtemp(prefix="rkpipe-services-"))
    base.chmod(0o755)
    env = os.environ | {
        "RKPIPE_SERVICES_DIR": str(base / "services"),
        "RKPIPE_PG_PORT": str(free_port()),
        "RKPIPE_MLFLOW_PORT": str(free_port()),
        "RKPIPE_PYTHON": sys.executable,
    }
    try:
        up = services(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, f"http://127.0.0.1:{env['RKPIPE_MLFLOW_PORT']}", up.stdout
    finally:
        services(env, "down")
        shutil.rmtree(base, ignore_errors=True)


def rest(uri: str, endpoint: str, body: dict | None = None) -> dict:
    """POST ``body`` to MLflow's REST ``endpoint`` (GET with ``body=None``)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/{endpoint}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}
