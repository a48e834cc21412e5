"""DVC stage evaluate: host accuracy of the quantized LLM (PPL, KLD, top-1) and ASR (WER, CER)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.evaluate.host import evaluate_variant
    from rkpipe.evaluate.sanity import BROKEN_METRIC, BrokenVariantError
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.io import write_json_atomic

    try:
        metrics = evaluate_variant(cfg)
    except BrokenVariantError as exc:
        run.set_tags({"gate": "broken", "gate.broken_reason": exc.summary})
        raise
    if metrics.get(BROKEN_METRIC):
        run.set_tags({"gate": "broken", "gate.broken_reason": "kept by eval.keep_broken"})
    run.log_metrics(metrics)
    run.set_tags(provenance_tags("evaluate", metrics["provenance"]))
    write_json_atomic(cfg.layout.metrics_file("evaluate"), metrics)


if __name__ == "__main__":
    run_stage("evaluate", body)
