"""DVC stage report: the variant's speed and accuracy tables, where each figure was measured,
and the verdict of the acceptance gates (also tagged on the MLflow run)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.config import variant_id
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.io import write_text_atomic
    from rkpipe.report import render_report
    from rkpipe.report.variant import read_metrics, report_context

    metrics, provenance = read_metrics(cfg.layout.metrics)
    ctx, gate_tags = report_context(cfg, metrics, provenance, run.run_id, Path.cwd())
    out = cfg.layout.report
    write_text_atomic(out, render_report(cfg, metrics, variant_id(cfg), ctx))
    run.log_metrics(metrics)
    run.set_tags(gate_tags)
    for stage, prov in provenance.items():  # again: stages restored from DVC's run cache
        run.set_tags(provenance_tags(stage, prov))  # logged nothing to this variant's run
    run.log_artifact(out, "report")


if __name__ == "__main__":
    run_stage("report", body)
