"""DVC stage report: the variant's speed and accuracy tables, where each figure was measured,
and the verdict of the acceptance gates (also tagged on the MLflow run)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.config import variant_id
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.io import write_json_atomic, write_text_atomic
    from rkpipe.measure.figures import log_figures, read_details
    from rkpipe.report import render_report
    from rkpipe.report.variant import read_metrics, report_context
    from rkpipe.tracking import stage_status_tag

    metrics, provenance = read_metrics(cfg.layout.metrics)
    ctx, gate_tags = report_context(cfg, metrics, provenance, run.run_id, Path.cwd())
    out = cfg.layout.report
    write_text_atomic(out, render_report(cfg, metrics, variant_id(cfg), ctx))
    write_json_atomic(cfg.layout.metrics_file("report"), {"gate": ctx.verdict})
    # Again: stages restored from DVC's run cache logged nothing to this variant's run. Their
    # figures come from the restored outputs, and the run says which stages were restored.
    logged = run.tags()
    for name, figures in read_details(cfg.layout.metrics).items():
        log_figures(run, name, figures)
        run.log_artifact(cfg.layout.metrics_details(name), "metrics")
    run.set_tags(gate_tags)
    for stage, prov in provenance.items():
        run.set_tags(provenance_tags(stage, prov))
        if logged and stage_status_tag(stage) not in logged:
            run.set_tags({f"rkpipe.restored.{stage}": "from DVC's run cache"})
    run.log_artifact(out, "report")


if __name__ == "__main__":
    run_stage("report", body)
