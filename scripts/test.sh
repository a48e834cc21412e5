#!/usr/bin/env bash
# The README's test command: unit, contract and integration tests (real DVC, MLflow, sshd,
# onnxruntime). The default run skips tests marked `slow` (full pipeline runs, sweeps); run
# them with `bash scripts/test.sh -m slow`, or everything with `bash scripts/test.sh -m ""`.
# Services (a loopback sshd, an MLflow server) are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m "not slow" "$@"
