"""Record what a variant produced, and rebuild it from its MLflow run (``rkpipe reproduce``).

The parts: :mod:`.record`, :mod:`.compare`, :mod:`.rebuild`, :mod:`.timings`.

Recording (:func:`record_outputs`, run by the ``record`` stage after ``report``): the
sha256 of every file of every output declared in ``dvc.yaml``, logged to the variant's
run as ``outputs/sha256.json`` together with the final ``dvc.lock``.

Rebuilding (:func:`reproduce`): check out the run's commit in a clean ``git worktree``,
write the run's ``params.yaml``, run ``dvc repro --force`` there with a cache of its own
(an empty cache and run cache, so nothing is restored: every stage really runs) and the
worktree's own ``src`` on ``PYTHONPATH``, then compare output hashes and metrics with
the run's. Timings (latency, throughput, RTF, peak RSS) are inherently nondeterministic:
they are reported, never counted as mismatches.
"""

from rkpipe.reproduce.compare import compare_metrics, compare_outputs
from rkpipe.reproduce.rebuild import render_result, reproduce
from rkpipe.reproduce.record import hash_outputs, output_record, record_outputs
from rkpipe.reproduce.timings import is_timing

__all__ = [
    "compare_metrics",
    "compare_outputs",
    "hash_outputs",
    "is_timing",
    "output_record",
    "record_outputs",
    "render_result",
    "reproduce",
]
