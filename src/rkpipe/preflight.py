"""What the preflight stage checks before any stage deletes an output.

DVC deletes a stage's outputs before it runs the stage, so a bad value found inside a heavy
stage costs the previous good outputs as well as the time. The preflight stage runs first on
every ``dvc repro`` / ``dvc exp run`` (every other stage depends on its verdict file) and, in
about a second, checks:

- the whole config against its domains and rules (``run_stage`` loads it validated), that
  the files the stages will read exist (:func:`rkpipe.config.domain.path_problems`) and that a
  ready calibration file is well formed;
- a local model source: its stat fingerprint is written where ``download_llm`` /
  ``download_asr`` depend on it, so a model edited in place reruns the download instead of
  DVC restoring stale outputs from its run cache;
- a remote board: reachable, host key known, SoC as its config says
  (:func:`rkpipe.board.preflight.quick_check`);
- a tracking server: answers within ``tracking.timeout_s`` (else, with ``tracking.journal``,
  a warning: the stages journal what they log);
- runs a SIGKILL left RUNNING are closed KILLED (:func:`rkpipe.tracking.reconcile_killed`),
  and the temporaries a killed stage left beside its outputs are removed;
- the workspace is claimed for this ``dvc exp run`` (:mod:`rkpipe.workspace_claim`), so a second
  one is refused before it rewrites ``params.yaml``.

The verdict file's content does not depend on the config: a passed preflight never reruns a
stage by itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rkpipe.config.domain import path_problems
from rkpipe.config.schema import PipelineConfig
from rkpipe.errors import ConfigError

log = logging.getLogger(__name__)

VERDICT = {"preflight": "passed"}
LOCAL_SOURCES = {"llm": ("model", "local"), "asr": ("asr", "local")}


def scrub_credentials(params_file: Path) -> bool:
    """Mask credentials in URIs of ``params_file``; returns whether there were any.

    ``rkpipe params`` refuses such a value, but ``dvc exp run -S tracking.uri=http://u:p@h``
    writes it into params.yaml before any stage runs. The preflight then fails on it (a URI
    with credentials is out of its domain); masking it first keeps the password out of the
    file a user may commit.
    """
    from rkpipe.io import write_text_atomic
    from rkpipe.secrets import redact_uri

    if not params_file.is_file():
        return False
    text = params_file.read_text(encoding="utf-8")
    clean = redact_uri(text)
    if clean != text:
        write_text_atomic(params_file, clean)
        log.warning("masked credentials in %s; pass them through the environment", params_file)
    return clean != text


def check_paths(cfg: PipelineConfig) -> None:
    """Fail in one line when a file a stage will read is missing."""
    if problems := path_problems(cfg):
        raise ConfigError("missing input: " + "; ".join(problems))


def check_calibration_file(cfg: PipelineConfig) -> None:
    """A ready calibration file (``calib.source=json``) parses and every record is usable."""
    if cfg.calib.source != "json":
        return
    from rkpipe.calibration.validate import validate_calibration_file

    validate_calibration_file(Path(cfg.calib.json_file), max_context=None)


def source_fingerprint(cfg: PipelineConfig, model: str) -> dict[str, Any]:
    """What a download stage acquires from: a local path's stat fingerprint, else nothing.

    Hub and package sources are pinned by params (commit, package version), so they need no
    fingerprint; a local directory can change under the same params.
    """
    from rkpipe.llm.integrity import local_source_fingerprint

    section, local = LOCAL_SOURCES[model]
    conf = getattr(cfg, section)
    if conf.source != local or not conf.path:
        return {"source": conf.source}
    return {"source": conf.source, "files": local_source_fingerprint(conf.path)}


def remove_leftovers(cfg: PipelineConfig, root: Path) -> int:
    """Remove the temporaries killed writers left beside any declared output.

    The next run of a killed stage removes its own, but DVC often restores that stage from its
    run cache instead of running it, so the preflight sweeps every output once per repro.
    """
    from rkpipe.config import config_dict
    from rkpipe.io import remove_stale_temporaries
    from rkpipe.workspace import declared_outputs

    outputs = declared_outputs(root / "dvc.yaml", config_dict(cfg))
    removed = [p for out in outputs for p in remove_stale_temporaries(root / out)]
    for path in removed:
        log.info("removed %s, left by a killed stage", path)
    return len(removed)


def check_board(cfg: PipelineConfig) -> None:
    """A remote board answers, its host key is known and its SoC is the configured one."""
    if cfg.board.transport == "local":
        return
    from rkpipe.board.preflight import quick_check

    facts = quick_check(cfg.board, timeout_s=min(cfg.board.timeout_s, 30.0))
    log.info("board %s: %s", cfg.board.name, ", ".join(f"{k} {v}" for k, v in facts.items()))


def check_tracker(cfg: PipelineConfig) -> bool:
    """The tracking server answers within ``tracking.timeout_s`` (the embedded store always).

    A server that does not, with ``tracking.journal``, is a warning: the stages journal what
    they log and a later stage or ``rkpipe sync`` replays it. Returns whether it answered.
    """
    if not cfg.tracking.enabled:
        return True
    from rkpipe.errors import TrackerUnreachable
    from rkpipe.tracking import check_tracker as probe

    try:
        probe(cfg.tracking.uri, cfg.tracking.timeout_s)
    except TrackerUnreachable as exc:  # a refusal (HTTP 401) still fails
        if not cfg.tracking.journal:
            raise
        log.warning("%s; the stages journal what they log (tracking.journal=true)", exc)
        return False
    return True


def check_remote(root: Path) -> None:
    """An SSH DVC remote presents the host key ``~/.ssh/known_hosts`` records (dvc-ssh itself
    would push to an unknown host; see :mod:`rkpipe.remote`) and accepts DVC's login. One that
    cannot be reached is a warning: ``dvc repro`` does not need it. No remote: nothing to do."""
    from rkpipe.remote import check_remote as check

    check(root)


def reconcile(cfg: PipelineConfig) -> None:
    """Close, as KILLED, the runs of stages a SIGKILL ended (cheap when there are none)."""
    if not cfg.tracking.enabled:
        return
    from rkpipe.tracking import reconcile_killed

    if closed := reconcile_killed(None, cfg):
        log.warning("closed %d MLflow run stage(s) a kill left RUNNING as KILLED", closed)
