"""DVC stage download_llm: acquire the LLM as a normalised HF checkpoint plus manifest."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.hostinfo import provenance_here
    from rkpipe.io import write_json_atomic
    from rkpipe.llm.acquire import acquire_llm

    out = cfg.layout.llm.float
    manifest = acquire_llm(cfg.model, out)
    metrics = {"model_params": manifest["parameter_count"], "float_size_mb": manifest["size_mb"]}
    # The metrics file first: a tracking server that fails below must not lose a figure.
    metrics_file = cfg.layout.metrics_file("download_llm")
    write_json_atomic(metrics_file, metrics | {"provenance": provenance_here()})
    run.log_params({"model.revision_resolved": manifest.get("revision_resolved") or "none"})
    run.log_metrics(metrics)
    run.log_artifact(out / "manifest.json", "manifests/llm")


if __name__ == "__main__":
    run_stage("download_llm", body)
