"""DVC stage export_asr: fp32 ONNX export of the ASR model (encoder, decoders with KV cache)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.export import export_fp32_onnx
    from rkpipe.errors import AsrError
    from rkpipe.llm.integrity import verify_acquired

    models = cfg.layout.asr
    verify_acquired(models.float, stage="download_asr", error=AsrError)
    facts = export_fp32_onnx(models.float, models.onnx_fp32)
    run.log_metrics({f"export_asr_{k}": v for k, v in facts.items() if isinstance(v, (int, float))})


if __name__ == "__main__":
    run_stage("export_asr", body)
