"""Operations on one variant's MLflow run that both a live stage and a journal replay use:
find or create the run by its variant tag, link it to a sweep's parent, record a stage's status.

Each stage's outcome stays visible after later stages succeed: ``rkpipe.stage.<stage>`` holds
its latest status and ``rkpipe.stage.<stage>.history`` every status it ever ended with, in
order (``killed,finished``), appended and never rewritten.
"""

from __future__ import annotations

from typing import Any

from rkpipe.tracking.client import with_retry

VARIANT_TAG = "rkpipe.variant"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "rkpipe.sweep"
KILLED_STAGE_TAG = "rkpipe.killed_stage"
HISTORY_LIMIT = 4000  # characters of a history tag (MLflow caps tag values at 8000)


def stage_status_tag(stage: str) -> str:
    """The tag holding ``stage``'s latest status (lower case)."""
    return f"rkpipe.stage.{stage}"


def stage_history_tag(stage: str) -> str:
    """The tag holding every status ``stage`` ended with, oldest first, comma separated."""
    return f"rkpipe.stage.{stage}.history"


def record_stage_status(
    client: Any, run_id: str, stage: str, status: str, tags: dict[str, str] | None = None
) -> None:
    """Set ``stage``'s status and append it to its history, in one batch.

    Read-modify-write is safe: the stages of one variant run one after another.
    """
    from mlflow.entities import RunTag

    if tags is None:
        tags = client.get_run(run_id).data.tags
    past = tags.get(stage_history_tag(stage), "")
    history = f"{past},{status.lower()}" if past else status.lower()
    if len(history) > HISTORY_LIMIT:  # keep the newest entries whole
        history = "...," + history[-HISTORY_LIMIT:].split(",", 1)[-1]
    batch = [
        RunTag(stage_status_tag(stage), status.lower()),
        RunTag(stage_history_tag(stage), history),
    ]
    if status == "KILLED":
        batch.append(RunTag(KILLED_STAGE_TAG, stage))
    client.log_batch(run_id, tags=batch)


def find_or_create_run(
    client: Any, experiment_id: str, variant: str, name: str, tags: dict[str, str]
) -> tuple[Any, bool]:
    """The run tagged ``rkpipe.variant=<variant>`` in the experiment, or a new one named
    ``name`` with ``tags``; and whether it already existed."""
    query = f"tags.`{VARIANT_TAG}` = '{variant}'"
    runs = with_retry(
        lambda: client.search_runs([experiment_id], filter_string=query, max_results=1)
    )
    if runs:
        return runs[0], True
    return with_retry(lambda: client.create_run(experiment_id, run_name=name, tags=tags)), False


def parent_tags(parent_run_id: str) -> dict[str, str]:
    """The tags that make a run the child of a sweep's parent run in the MLflow UI."""
    return {PARENT_TAG: parent_run_id, SWEEP_TAG: parent_run_id}


def link_parent(client: Any, run_id: str, parent: str | None) -> None:
    """Make ``run_id`` a child of the sweep run ``parent`` (nothing without a parent)."""
    if parent and parent != run_id:
        for key, value in parent_tags(parent).items():
            with_retry(lambda k=key, v=value: client.set_tag(run_id, k, v))
