"""DVC stage evaluate: host accuracy of the quantized LLM (PPL, KLD, top-1) and ASR (WER, CER)."""

import contextlib

from rkpipe.errors import TrackingError
from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.evaluate.host import evaluate_variant
    from rkpipe.evaluate.sanity import BROKEN_METRIC, BrokenVariantError
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.measure.figures import publish

    try:
        metrics = evaluate_variant(cfg)
    except BrokenVariantError as exc:
        # The broken verdict is the error to report, even when the tracker is down too.
        with contextlib.suppress(TrackingError):
            run.set_tags({"gate": "broken", "gate.broken_reason": exc.summary})
        raise
    provenance = metrics["provenance"]
    publish(cfg.layout, run, "evaluate", metrics, provenance)
    if metrics.get(BROKEN_METRIC):
        run.set_tags({"gate": "broken", "gate.broken_reason": "kept by eval.keep_broken"})
    run.set_tags(provenance_tags("evaluate", provenance))


if __name__ == "__main__":
    run_stage("evaluate", body)
