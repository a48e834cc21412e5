"""onnxruntime-genai's model builder, run in its own interpreter, as a source of fused graphs.

The builder emits a ~340-node graph (GroupQueryAttention with rotary, SkipSimplifiedLayerNorm,
fused QKV, MatMulNBits everywhere) where optimum's export has over 7,000 unfused nodes, which
is what makes onnxruntime decode faster than llama.cpp here. It needs transformers >= 5 (the
main environment is capped below 4.58 by optimum-onnx) and the undeclared ``onnx-ir``, so it
lives in a separate virtualenv made by ``scripts/setup_genai.sh`` and is run as a subprocess:

* ``genai_int4`` / ``genai_int8``: the builder's own weight-only quantization
  (``-p int4|int8``, ``block_size``, ``accuracy_level``, shared embeddings);
* ``genai_gguf_exact``: the builder's fp32 graph, then every weight replaced by the GGUF's
  exact blocks (:mod:`.gguf_exact`).

The result runs under plain onnxruntime (:mod:`rkpipe.engines.ort_llm` maps outputs by name
and feeds no ``position_ids``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from rkpipe.errors import BackendError, ConfigError
from rkpipe.toolchain import Toolchain

log = logging.getLogger(__name__)

GENAI_VENV = ".venv-genai"
GENAI_PYTHON_ENV = "RKPIPE_GENAI_PYTHON"
BUILDER_MODULE = "onnxruntime_genai.models.builder"
BUILDER_LOG = "genai_builder.log"
BUILDER_TIMEOUT_S = 3600
LOG_TAIL_LINES = 30


BUILDER = Toolchain(
    name="onnxruntime-genai's model builder",
    env_var=GENAI_PYTHON_ENV,
    config_key="quant.ort.genai_python",
    module="onnxruntime_genai",
    setup_hint="the genai_* schemes run it in its own interpreter; create it with: bash "
    "scripts/setup_genai.sh (a python with onnxruntime_genai, transformers>=5, onnx-ir)",
    venv_python=Path(GENAI_VENV) / "bin" / "python",
    error=ConfigError,
)


def genai_python(configured: str | None = None) -> str:
    """The interpreter that has onnxruntime-genai's builder (:data:`BUILDER`).

    Raises:
        ConfigError: none is found (the message gives the setup command).
    """
    return BUILDER.python(configured)


def builder_args(precision: str, block_size: int, accuracy_level: int) -> list[str]:
    """``--extra_options`` for the builder: weight-only quantization settings.

    ``precision`` is ``int4``, ``int8`` or ``fp32``. Symmetric weights (the builder's default)
    avoid the dangling-initializer bug of ``is_symmetric=false`` with an int8 lm_head.
    """
    if precision == "fp32":
        return []
    options = [f"block_size={block_size}", "is_symmetric=true", "shared_embeddings=true"]
    if accuracy_level:
        options.append(f"accuracy_level={accuracy_level}")
    return ["--extra_options", *options]


def run_builder(
    python: str, float_dir: Path, out_dir: Path, precision: str, extra: list[str], log_path: Path
) -> float:
    """Run the builder on the HF model in ``float_dir`` into ``out_dir``; return seconds taken.

    Its output goes to ``log_path`` (never to the console: it prints a line per tensor).

    Raises:
        BackendError: non-zero exit, timeout, or no ``model.onnx``; the message has the log tail.
    """
    cmd = [
        python,
        "-m",
        BUILDER_MODULE,
        "-i",
        str(Path(float_dir).resolve()),
        "-o",
        str(Path(out_dir).resolve()),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(Path(out_dir).resolve().parent / ".genai_cache"),
        *extra,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)  # the builder's interpreter must not see this venv's packages
    log.info("genai builder: %s", " ".join(cmd))
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as handle:
        try:
            code = subprocess.run(
                cmd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=BUILDER_TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise BackendError(
                f"genai builder timed out after {BUILDER_TIMEOUT_S} s; log: {log_path}"
            ) from exc
    seconds = time.perf_counter() - start
    if code != 0 or not (Path(out_dir) / "model.onnx").is_file():
        raise BackendError(
            f"genai builder ({precision}) failed with exit code {code}; last "
            f"lines of {log_path}:\n{_tail(log_path)}"
        )
    shutil.rmtree(Path(out_dir).parent / ".genai_cache", ignore_errors=True)
    return seconds


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(line[-300:] for line in lines[-LOG_TAIL_LINES:])


def check_builder(python: str) -> None:
    """Fail early, with the setup command, if ``python`` cannot import the builder.

    Raises:
        ConfigError: the import fails.
    """
    probe = subprocess.run(
        [python, "-c", f"import {BUILDER_MODULE}, onnx_ir"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise ConfigError(
            f"{python} cannot import {BUILDER_MODULE} ({last}); run: bash scripts/setup_genai.sh"
        )


def build_genai(
    python: str, float_dir: Path, work: Path, precision: str, block_size: int, accuracy_level: int
) -> tuple[Path, float]:
    """Builder graph in ``work/genai`` (created); return its directory and the build seconds."""
    check_builder(python)
    out = Path(work) / "genai"
    out.mkdir(parents=True, exist_ok=True)
    seconds = run_builder(
        python,
        float_dir,
        out,
        precision,
        builder_args(precision, block_size, accuracy_level),
        Path(work) / BUILDER_LOG,
    )
    return out, seconds
