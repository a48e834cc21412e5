"""DVC stage quantize_asr: onnxruntime quantization of the ASR model, then what asr.backend adds."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.backends import ASR_BACKENDS
    from rkpipe.asr.quantize import quantize_asr
    from rkpipe.config import flatten
    from rkpipe.hostinfo import provenance_here
    from rkpipe.measure.figures import publish

    models = cfg.layout.asr
    result = quantize_asr(models.onnx_fp32, models.quantized, cfg.asr.quant)
    metrics = {f"asr_{k}": v for k, v in flatten(result).items() if isinstance(v, (int, float))}
    convert = ASR_BACKENDS.get(cfg.asr.backend)
    extra = convert(models.onnx_fp32, models.quantized, cfg.asr, cfg.layout.asr_testset)
    metrics |= {f"asr_{k}": v for k, v in extra.items() if isinstance(v, (int, float))}
    publish(cfg.layout, run, "quantize_asr", metrics, provenance_here())


if __name__ == "__main__":
    run_stage("quantize_asr", body)
