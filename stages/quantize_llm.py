"""DVC stage quantize_llm: quantize the LLM with the configured backend (see rkpipe.backends)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.backends import get_backend
    from rkpipe.backends.base import QuantizeRequest
    from rkpipe.hostinfo import provenance_here
    from rkpipe.measure.figures import publish

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
    publish(cfg.layout, run, "quantize_llm", result.metrics, provenance_here())
    # Once, namespaced: the backend's settings under its name, without its echo of the config
    # (backend, dtype, platform are already the params quant.backend, quant.dtype, platform.name).
    echoed = {"backend": cfg.quant.backend, "dtype": cfg.quant.dtype, "platform": cfg.platform.name}
    run.log_params({
        key if "." in key else f"{cfg.quant.backend}.{key}": value
        for key, value in result.params.items() if echoed.get(key) != value
    })  # fmt: skip
    run.log_artifact(result.out_dir / "quant_manifest.json", "manifests/quantize_llm")
    for toolkit_log in result.out_dir.glob("*.log"):
        run.log_artifact(toolkit_log, "logs")


if __name__ == "__main__":
    run_stage("quantize_llm", body)
