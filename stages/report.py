"""DVC stage report: the seed-shaped markdown table plus accuracy columns for this variant."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.config import variant_id
    from rkpipe.io import read_json, write_text_atomic
    from rkpipe.report import render_report

    metrics = {}
    for path in sorted(Path(cfg.paths.metrics_dir).glob("*.json")):
        metrics.update(read_json(path))
    out = Path(cfg.paths.reports_dir) / "report.md"
    write_text_atomic(out, render_report(cfg, metrics, variant_id(cfg)))
    run.log_metrics(metrics)
    run.log_artifact(out, "report")


if __name__ == "__main__":
    run_stage("report", body)
