"""DVC stage evaluate: host accuracy of the quantized LLM (PPL, KLD, top-1) and ASR (WER, CER)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.evaluate.host import evaluate_variant
    from rkpipe.io import write_json_atomic

    metrics = evaluate_variant(cfg)
    run.log_metrics(metrics)
    write_json_atomic(Path(cfg.paths.metrics_dir) / "evaluate.json", metrics)


if __name__ == "__main__":
    run_stage("evaluate", body)
