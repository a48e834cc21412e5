"""DVC stage deploy_bench: deploy to the configured board and measure TTFT, tok/s, memory, RTF."""

from pathlib import Path

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.board.deploy import deploy_and_bench
    from rkpipe.hostinfo import provenance_tags
    from rkpipe.io import write_json_atomic

    result = deploy_and_bench(cfg)
    reports = Path(cfg.paths.reports_dir)
    for kind in ("llm", "asr"):
        rows = [row for row in result.samples if row.get("kind") == kind]
        write_json_atomic(reports / f"bench_{kind}_samples.json", rows)
        run.log_artifact(reports / f"bench_{kind}_samples.json", "bench")
    metrics = result.metrics | {"provenance": result.provenance}
    write_json_atomic(Path(cfg.paths.metrics_dir) / "bench.json", metrics)
    run.log_metrics(result.metrics)
    run.set_tags({f"board.{key}": value for key, value in result.facts.items()})
    run.set_tags(provenance_tags("deploy_bench", result.provenance))


if __name__ == "__main__":
    run_stage("deploy_bench", body)
