"""DVC stage reference_logits: the float model's logits on the evaluation text, once per model
and text, so that every variant's evaluate stage scores against the same cached reference."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.evaluate.host import write_reference_logits
    from rkpipe.hostinfo import provenance_here
    from rkpipe.io import write_json_atomic

    metrics = write_reference_logits(cfg)
    # The metrics file first: a tracking server that fails below must not lose a figure.
    metrics_file = cfg.layout.metrics_file("reference_logits")
    write_json_atomic(metrics_file, metrics | {"provenance": provenance_here()})
    run.log_metrics(metrics)


if __name__ == "__main__":
    run_stage("reference_logits", body)
