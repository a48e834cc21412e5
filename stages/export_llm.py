"""DVC stage export_llm: the fp32 ONNX export with KV cache (host reference for every variant)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.llm.export import export_fp32_onnx
    from rkpipe.llm.integrity import verify_acquired

    models = cfg.layout.llm
    verify_acquired(models.float, stage="download_llm")  # a file corrupted since, in one line
    facts = export_fp32_onnx(
        models.float, models.onnx_fp32, trust_remote_code=cfg.model.trust_remote_code
    )
    run.log_metrics({f"export_llm_{k}": v for k, v in facts.items() if isinstance(v, (int, float))})


if __name__ == "__main__":
    run_stage("export_llm", body)
