"""DVC stage deploy_bench: deploy to the configured board and measure TTFT, tok/s, memory, RTF."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.board.deploy import deploy_and_bench
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.io import write_json_atomic
    from rkpipe.measure.figures import publish

    result = deploy_and_bench(cfg)
    layout = cfg.layout
    samples = (("llm", layout.bench_llm_samples), ("asr", layout.bench_asr_samples))
    # Every file first: a tracking server that fails below must not lose a figure. The plotted
    # samples are the measured repetitions: warm-ups restart at rep 0 and would overlap them.
    for kind, path in samples:
        rows = [r for r in result.samples if r.get("kind") == kind and not r.get("warmup")]
        write_json_atomic(path, rows)
    publish(layout, run, "bench", result.metrics, result.provenance)
    for _, path in samples:
        run.log_artifact(path, "bench")
    run.set_tags({f"board.{key}": value for key, value in result.facts.items()})
    if result.notes:  # why a figure is missing (device_eval.missing)
        run.set_tags(result.notes)
    run.set_tags(provenance_tags("deploy_bench", result.provenance))


if __name__ == "__main__":
    run_stage("deploy_bench", body)
