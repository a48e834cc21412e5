"""DVC stage calibrate: build the rkllm-toolkit calibration JSON [{"input", "target"}]."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.calibration import build_calibration_file
    from rkpipe.hostinfo import provenance_here
    from rkpipe.io import write_json_atomic

    model_dir = Path(cfg.paths.models_dir) / "llm" / "float"
    out = Path(cfg.paths.data_dir) / "calib" / "calibration.json"
    summary = build_calibration_file(model_dir, cfg.calib, cfg.quant.max_context, out)
    run.log_dataset(out, summary["sha256"], name="calibration", context="calibration")
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    run.log_metrics(metrics)
    run.log_artifact(out, "calibration")
    metrics_file = Path(cfg.paths.metrics_dir) / "calibrate.json"
    write_json_atomic(metrics_file, metrics | {"provenance": provenance_here()})


if __name__ == "__main__":
    run_stage("calibrate", body)
