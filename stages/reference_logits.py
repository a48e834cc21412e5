"""DVC stage reference_logits: the float model's logits on the evaluation text, once per model
and text, so that every variant's evaluate stage scores against the same cached reference."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.evaluate.host import write_reference_logits
    from rkpipe.hostinfo import provenance_here
    from rkpipe.measure.figures import publish

    metrics = write_reference_logits(cfg)
    publish(cfg.layout, run, "reference_logits", metrics, provenance_here())


if __name__ == "__main__":
    run_stage("reference_logits", body)
