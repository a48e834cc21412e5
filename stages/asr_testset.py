"""DVC stage asr_testset: synthesize the offline English test clips (espeak-ng + sox)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.testset import synthesize_testset

    out = cfg.layout.asr_testset
    variants = tuple(cfg.asr.testset_variants)
    summary = synthesize_testset(Path(cfg.asr.eval_sentences), out, variants=variants)
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    metrics.update({f"clips_{name}": count for name, count in summary["variants"].items()})
    run.log_metrics(metrics)


if __name__ == "__main__":
    run_stage("asr_testset", body)
