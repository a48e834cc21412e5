"""MLflow tracking: one run per variant, shared by every stage of that variant.

This package is the only place that imports mlflow; this file is its face, the parts are
:mod:`.client` (store access), :mod:`.handle` (logging), :mod:`.lifecycle` (the run of a
stage) and :mod:`.provenance` (what a rebuild needs). A variant is identified by the hash of
its resolved config (:func:`rkpipe.config.variant_id`); each stage finds the run
tagged with that hash (or creates it), resumes it, logs, and closes it with the
right status: FINISHED, FAILED on an exception, KILLED on SIGTERM/Ctrl-C. A run
left RUNNING by a SIGKILL is closed as KILLED by the next stage that opens it.

Parallel writers (``dvc queue start -j N``) share one SQLite store: every client call
holds an exclusive file lock next to the database and retries "database is locked"
with backoff (:class:`SerialisedClient`). A sweep passes its MLflow parent run through
``RKPIPE_PARENT_RUN_ID``; the variant's run is then tagged ``mlflow.parentRunId``.
Each stage records what a rebuild needs (:func:`reproduction_tags`): the commit the
variant was built from (DVC's experiment baseline for queued runs), whether the tree
differed from it, the experiment name, and the versions of the runtimes.
"""

from rkpipe.tracking.client import (
    STORE_DIR,
    SerialisedClient,
    artifact_location,
    make_client,
    store_lock,
    tracking_uri,
    with_retry,
)
from rkpipe.tracking.handle import NullRun, VariantRun
from rkpipe.tracking.lifecycle import (
    HOST_TAG,
    PARENT_ENV,
    PARENT_TAG,
    PID_TAG,
    SWEEP_TAG,
    UNTRACKED_KEYS,
    VARIANT_TAG,
    Terminated,
    open_variant_run,
    parent_tags,
    run_name,
    stage_run,
    untracked_run,
    variant_tags,
)
from rkpipe.tracking.provenance import (
    VERSION_PACKAGES,
    reproduction_tags,
    runtime_versions,
    standard_tags,
    workspace_root,
)

__all__ = [
    "HOST_TAG",
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
    "make_client",
    "open_variant_run",
    "parent_tags",
    "reproduction_tags",
    "run_name",
    "runtime_versions",
    "stage_run",
    "standard_tags",
    "store_lock",
    "tracking_uri",
    "untracked_run",
    "variant_tags",
    "with_retry",
    "workspace_root",
]
