#!/usr/bin/env bash
# Make .venv-rknn: rknn-toolkit2 (Rockchip's NPU converter, PyPI) in its OWN virtualenv, for
# asr.backend=rknn. Only on demand: bash scripts/setup.sh does not run this.
#
# rknn-toolkit2 2.5.0 declares numpy<=1.26.4, onnx<=1.18.0, protobuf<=4.25.4 and
# torch<=2.4.0, none of which fit rkpipe's own environment. The toolkit is installed --no-deps
# with its declared dependencies pinned below. torch is only needed at import time for ONNX
# conversion (its PyTorch loader is unused here): RKNN_TORCH (default "torch==2.13.0", the CPU
# wheel these machines keep in /opt/wheels, as rkpipe's own pin) was verified to convert and
# simulate. Never leave torch unpinned: PyPI's newest torch pulls several GB of CUDA wheels. Set
# RKNN_TORCH="torch==2.4.0" with PIP_EXTRA_INDEX_URL pointing at the PyTorch CPU wheel index to
# honour the toolkit's own pin. opencv is the headless build (no GUI libs needed).
#
# Idempotent: a second run only checks. Usage: bash scripts/setup_rknn.sh
# Then: asr.backend=rknn (rkpipe finds ./.venv-rknn/bin/python, or set RKPIPE_RKNN_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${RKNN_VENV:-.venv-rknn}
TOOLKIT=${RKNN_TOOLKIT:-rknn-toolkit2==2.5.0}
TORCH=${RKNN_TORCH:-torch==2.13.0}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "from rknn.api import RKNN" 2>/dev/null; then
  echo "setup_rknn: $VENV already has rknn-toolkit2: $("$VENV/bin/python" -m pip show rknn-toolkit2 | grep ^Version)"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q \
  "numpy==1.26.4" "onnx==1.18.0" "onnxruntime>=1.17,<1.27" "protobuf==4.25.4" \
  "scipy>=1.9.3" "psutil>=5.9.0" "ruamel.yaml>=0.17.21" "tqdm>=4.64.1" \
  "opencv-python-headless>=4.5.5.64" "fast-histogram>=0.11"
"$VENV/bin/python" -m pip install -q "$TORCH" "numpy==1.26.4"
# the toolkit imports pkg_resources, which newer setuptools (pulled in by torch) dropped
"$VENV/bin/python" -m pip install -q "setuptools<70"
"$VENV/bin/python" -m pip install -q --no-deps "$TOOLKIT"
"$VENV/bin/python" -c "from rknn.api import RKNN; RKNN()" >/dev/null
echo "setup_rknn: done: $("$VENV/bin/python" -m pip show rknn-toolkit2 | grep ^Version) in $VENV"
