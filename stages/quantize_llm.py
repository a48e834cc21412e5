"""DVC stage quantize_llm: quantize the LLM with the configured backend (see rkpipe.backends)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.backends import get_backend
    from rkpipe.backends.base import QuantizeRequest
    from rkpipe.hostinfo import provenance_here
    from rkpipe.io import write_json_atomic

    models = cfg.layout.llm
    request = QuantizeRequest(
        float_model_dir=models.float,
        onnx_fp32_dir=models.onnx_fp32,
        calibration_json=cfg.layout.calibration,
        quant=cfg.quant,
        platform=cfg.platform.name,
        out_dir=models.quantized,
    )
    result = get_backend(cfg.quant.backend).quantize(request)
    # The metrics file first: a tracking server that fails below must not lose a figure.
    metrics_file = cfg.layout.metrics_file("quantize_llm")
    write_json_atomic(metrics_file, result.metrics | {"provenance": provenance_here()})
    run.log_params(result.params)
    run.log_metrics(result.metrics)
    run.log_artifact(result.out_dir / "quant_manifest.json", "manifests/quantize_llm")
    for toolkit_log in result.out_dir.glob("*.log"):
        run.log_artifact(toolkit_log, "logs")


if __name__ == "__main__":
    run_stage("quantize_llm", body)
