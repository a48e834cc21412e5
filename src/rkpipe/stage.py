"""The harness every DVC stage entry point runs in.

``run_stage("calibrate", body)`` configures logging, loads and validates
``params.yaml`` (failing in well under a second on a bad value), opens the
variant's MLflow run, calls ``body(cfg, run)``, and turns an
:class:`~rkpipe.errors.RkpipeError` into a one-line message and exit code 1.

Every stage runs with a fixed ``PYTHONHASHSEED``: the ONNX exporters and quantizers iterate
over sets in places, so without it two runs of the same stage write different bytes (measured
for quantize_asr: a new decoder hash on every run), and ``rkpipe reproduce`` could not be
byte-identical.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rkpipe.config import PipelineConfig, load_params
from rkpipe.errors import RkpipeError
from rkpipe.secrets import redact_text

log = logging.getLogger("rkpipe.stage")

StageBody = Callable[[PipelineConfig, "VariantRun"], None]  # noqa: F821


def configure_logging(level: str | None = None) -> None:
    """Log to stderr with rich when available; ``RKPIPE_LOG_LEVEL`` sets the level.

    Every record and warning (libraries' too) passes :class:`~rkpipe.secrets.RedactingFilter`,
    so a credential in a URI or a token's value never reaches the log.
    """
    from rkpipe.progress import console, silence_other_bars
    from rkpipe.secrets import RedactingFilter

    level = (level or os.environ.get("RKPIPE_LOG_LEVEL", "INFO")).upper()
    silence_other_bars()  # rich draws every bar (rkpipe.progress), on the log's console
    try:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=console(), show_path=False, rich_tracebacks=False
        )
        fmt = "%(message)s"
    except ImportError:
        handler = logging.StreamHandler()
        fmt = "%(levelname)s %(name)s: %(message)s"
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    logging.captureWarnings(True)


def ensure_fixed_hash_seed(seed: str = "0") -> None:
    """Re-execute this interpreter with ``PYTHONHASHSEED=seed`` unless it already runs so."""
    if os.environ.get("PYTHONHASHSEED") == seed:
        return
    env = dict(os.environ, PYTHONHASHSEED=seed)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def run_stage(
    name: str, body: StageBody, params_file: str = "params.yaml", *, tracked: bool = True
) -> None:
    """Run one stage; exit 1 with a one-line error on a known failure, 130/143 when killed.

    ``tracked=False`` runs ``body`` without opening the variant's MLflow run (a stage that runs
    on every ``dvc repro``, such as host_fingerprint, must not cost MLflow's start-up).
    """
    ensure_fixed_hash_seed()
    from rkpipe.tracking import Terminated, stage_run, untracked_run

    configure_logging()
    start = time.perf_counter()
    try:
        cfg = load_params(Path(params_file))
        with stage_run(cfg, name) if tracked else untracked_run(name) as run:
            body(cfg, run)
            run.log_metrics({f"stage_{name}_s": time.perf_counter() - start})
    except RkpipeError as exc:
        # The user gets one line; the traceback stays in the log at debug level.
        log.debug("stage %s failed", name, exc_info=True)
        print(f"rkpipe {name}: error: {redact_text(str(exc))}", file=sys.stderr)
        sys.exit(1)
    except Terminated:
        print(f"rkpipe {name}: terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"rkpipe {name}: interrupted", file=sys.stderr)
        sys.exit(130)
    log.info("stage %s done in %.1f s", name, time.perf_counter() - start)
