"""DVC stage asr_testset: synthesize the offline English test clips (espeak-ng + sox)."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.asr.testset import synthesize_testset

    out = cfg.layout.asr_testset
    variants = tuple(cfg.asr.testset_variants)
    summary = synthesize_testset(Path(cfg.asr.eval_sentences), out, variants=variants)
    # How the clips were made are params (espeak-ng's speed is words per minute, not a
    # throughput; clip counts are facts of the test set); only the durations are metrics.
    run.log_params({
        "asr_testset.voice": summary["voice"],
        "asr_testset.speed_wpm": summary["speed"],
        "asr_testset.clips": summary["clips"],
        **{f"asr_testset.clips.{name}": n for name, n in summary["variants"].items()},
    })  # fmt: skip
    run.log_metrics(
        {"asr_testset_audio_s": summary["audio_s"], "asr_testset_synth_s": summary["synth_s"]}
    )


if __name__ == "__main__":
    run_stage("asr_testset", body)
