"""DVC stage download_llm: acquire the LLM as a normalised HF checkpoint plus manifest."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.hostinfo import provenance_here
    from rkpipe.llm.acquire import acquire_llm
    from rkpipe.measure.figures import publish

    out = cfg.layout.llm.float
    manifest = acquire_llm(cfg.model, out)
    metrics = {"model_params": manifest["parameter_count"], "float_size_mb": manifest["size_mb"]}
    publish(cfg.layout, run, "download_llm", metrics, provenance_here())
    run.log_params({"model.revision_resolved": manifest.get("revision_resolved") or "none"})
    run.log_artifact(out / "manifest.json", "manifests/llm")


if __name__ == "__main__":
    run_stage("download_llm", body)
