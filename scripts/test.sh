#!/usr/bin/env bash
# The README's test command: unit, contract and integration tests (real DVC, MLflow, onnxruntime).
# Services the tests need (e.g. a loopback sshd) are started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
