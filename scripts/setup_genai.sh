#!/usr/bin/env bash
# Create .venv-genai: a SEPARATE interpreter for onnxruntime-genai's model builder, used by the
# onnxruntime backend's genai_* schemes (quant.ort.scheme=genai_int4|genai_int8|genai_gguf_exact).
# The builder needs transformers>=5, which conflicts with optimum-onnx's transformers<4.58 cap
# in .venv, and imports onnx-ir without declaring it. Idempotent: a second run only checks.
# Usage: bash scripts/setup_genai.sh   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${RKPIPE_GENAI_VENV:-.venv-genai}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
if "$venv/bin/python" -c "import onnxruntime_genai.models.builder, transformers, onnx_ir" 2>/dev/null; then
  echo "setup_genai: $venv ready"; exit 0
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# torch is the CPU build (never the CUDA wheels); outside this project's machines point pip at
# the PyTorch CPU index with PIP_EXTRA_INDEX_URL.
"$venv/bin/python" -m pip install -q \
  "torch==2.13.0" "transformers==5.24.0" "onnxruntime-genai==0.18.0" "onnxruntime==1.32.0" \
  "onnx==1.23.2" "onnx-ir==1.1.0" "numpy>=2,<3" "safetensors" "sentencepiece" "protobuf"
"$venv/bin/python" -c "import onnxruntime_genai.models.builder" >/dev/null
echo "setup_genai: $venv ready"
