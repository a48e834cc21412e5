"""DVC stage quantize_asr: onnxruntime quantization of the ASR model (the seed's scheme)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.quantize import quantize_asr
    from rkpipe.config import flatten
    from rkpipe.hostinfo import provenance_here
    from rkpipe.io import write_json_atomic

    models = Path(cfg.paths.models_dir) / "asr"
    result = quantize_asr(models / "onnx_fp32", models / "quantized", cfg.asr.quant)
    metrics = {f"asr_{k}": v for k, v in flatten(result).items() if isinstance(v, (int, float))}
    if cfg.asr.backend == "rknn":
        from rkpipe.asr.rknn import convert_encoder_rknn

        rknn = convert_encoder_rknn(
            models / "onnx_fp32", models / "quantized" / "rknn", cfg.asr.rknn,
            calib_sentences=cfg.asr.quant.calib_sentences,
        )  # fmt: skip
        metrics |= {f"asr_{k}": v for k, v in rknn.items() if isinstance(v, (int, float))}
    run.log_metrics(metrics)
    metrics_file = Path(cfg.paths.metrics_dir) / "quantize_asr.json"
    write_json_atomic(metrics_file, metrics | {"provenance": provenance_here()})


if __name__ == "__main__":
    run_stage("quantize_asr", body)
