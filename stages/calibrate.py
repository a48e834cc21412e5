"""DVC stage calibrate: build the rkllm-toolkit calibration JSON [{"input", "target"}]."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.calibration.builder import build_calibration_file
    from rkpipe.hostinfo import provenance_here
    from rkpipe.llm.integrity import verify_acquired
    from rkpipe.measure.figures import publish

    model_dir = cfg.layout.llm.float
    verify_acquired(model_dir, stage="download_llm")  # a file corrupted since, named in one line
    out = cfg.layout.calibration
    summary = build_calibration_file(model_dir, cfg.calib, cfg.quant.max_context, out)
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    publish(cfg.layout, run, "calibrate", metrics, provenance_here())
    run.log_dataset(out, summary["sha256"], name="calibration", context="calibration")
    run.log_artifact(out, "calibration")


if __name__ == "__main__":
    run_stage("calibrate", body)
