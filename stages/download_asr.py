"""DVC stage download_asr: acquire (or create, offline) the ASR model plus manifest."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.model import acquire_asr

    out = cfg.layout.asr.float
    manifest = acquire_asr(cfg.asr, out)
    run.log_params({"asr.revision_resolved": manifest.get("commit_sha") or "none"})
    run.log_metrics({"asr_model_params": manifest["parameters"]})
    run.log_artifact(out / "manifest.json", "manifests/asr")


if __name__ == "__main__":
    run_stage("download_asr", body)
