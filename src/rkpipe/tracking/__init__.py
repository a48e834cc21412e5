"""MLflow tracking: one run per variant, shared by every stage of that variant.

This package is the only place that imports mlflow; this file is its face, the parts are
:mod:`.client` (store access), :mod:`.handle` (logging), :mod:`.lifecycle` (the run of a
stage) and :mod:`.provenance` (what a rebuild needs). A variant is identified by the hash of
its resolved config (:func:`rkpipe.config.variant_id`); each stage finds the run
tagged with that hash (or creates it), resumes it, logs, and closes it with the
right status: FINISHED, FAILED on an exception, KILLED on SIGTERM/Ctrl-C.

Kills. A stage marks itself running with a local file,
``<repo>/.dvc/tmp/rkpipe/running/<variant>.<stage>.<pid>.json`` (run id, stage, pid, host, start
time; :mod:`.markers`), written when it opens the run and removed once it has closed it.
:func:`reconcile_killed` (called by the preflight stage, which runs first on every
``dvc repro``/``dvc exp run``, and by every stage when it opens its run) finds the markers whose
process is gone, records that stage as KILLED and terminates the run as KILLED if it is still
RUNNING, so a run is closed even when every later stage is restored from DVC's run cache. It
reads only that directory (no mlflow import) when nothing was killed. A run left RUNNING
without a marker (a kill by an older rkpipe) is closed as KILLED by the next stage that opens
it (tags ``rkpipe.pid``/``rkpipe.host`` name a dead process).

Per-stage status. ``rkpipe.stage.<stage>`` holds the stage's latest status (``finished``,
``failed``, ``killed``) and ``rkpipe.stage.<stage>.history`` every status it ended with, oldest
first (``killed,finished``), appended, never rewritten: when a later stage finishes the run
FINISHED after a kill, the history still shows the kill (``rkpipe.killed_stage`` names the
last stage killed).

Outages. A tracking server (``http(s)://``) is waited for at most ``tracking.timeout_s``
(MLflow's own retries, about 250 s, are turned off; :mod:`.client`); a failing store ends the
stage with one :class:`~rkpipe.errors.TrackingError` line naming the URI with credentials
redacted (:func:`redact_uri`). Stages write their metrics file before logging to MLflow, so
an outage never loses a computed figure. :func:`check_tracker` probes a server for a preflight.

Parallel writers (``dvc queue start -j N``) share one SQLite store: every client call
holds an exclusive file lock next to the database and retries "database is locked"
with backoff (:class:`SerialisedClient`). A sweep passes its MLflow parent run through
``RKPIPE_PARENT_RUN_ID``; the variant's run is then tagged ``mlflow.parentRunId``.
Each stage records what a rebuild needs (:func:`reproduction_tags`): the commit the
variant was built from (DVC's experiment baseline for queued runs), whether the tree
differed from it, the experiment name, and the versions of the runtimes.
"""

from rkpipe.tracking.client import (
    FALLBACK_HINT,
    STORE_DIR,
    SerialisedClient,
    artifact_location,
    check_tracker,
    ensure_experiment,
    is_server,
    make_client,
    redact_uri,
    store_lock,
    tracking_uri,
    with_retry,
)
from rkpipe.tracking.handle import NullRun, VariantRun
from rkpipe.tracking.lifecycle import (
    HOST_TAG,
    PARENT_ENV,
    PID_TAG,
    UNTRACKED_KEYS,
    Terminated,
    open_variant_run,
    reconcile_killed,
    run_name,
    stage_run,
    untracked_run,
    variant_tags,
)
from rkpipe.tracking.markers import dead_markers, marker_dir
from rkpipe.tracking.provenance import (
    VERSION_PACKAGES,
    reproduction_tags,
    runtime_versions,
    standard_tags,
    workspace_root,
)
from rkpipe.tracking.runs import (
    KILLED_STAGE_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    parent_tags,
    record_stage_status,
    stage_history_tag,
    stage_status_tag,
)

__all__ = [
    "FALLBACK_HINT",
    "HOST_TAG",
    "KILLED_STAGE_TAG",
    "PARENT_ENV",
    "PARENT_TAG",
    "PID_TAG",
    "STORE_DIR",
    "SWEEP_TAG",
    "UNTRACKED_KEYS",
    "VARIANT_TAG",
    "VERSION_PACKAGES",
    "NullRun",
    "SerialisedClient",
    "Terminated",
    "VariantRun",
    "artifact_location",
    "ensure_experiment",
    "check_tracker",
    "dead_markers",
    "is_server",
    "make_client",
    "marker_dir",
    "open_variant_run",
    "parent_tags",
    "reconcile_killed",
    "record_stage_status",
    "redact_uri",
    "reproduction_tags",
    "run_name",
    "runtime_versions",
    "stage_history_tag",
    "stage_run",
    "stage_status_tag",
    "standard_tags",
    "store_lock",
    "tracking_uri",
    "untracked_run",
    "variant_tags",
    "with_retry",
    "workspace_root",
]
