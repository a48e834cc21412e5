"""DVC stage preflight (always runs, first): checks the config, the inputs, the board and the
tracker in about a second, before any stage's outputs are deleted (see rkpipe.preflight)."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from pathlib import Path

    from rkpipe import preflight
    from rkpipe.io import write_json_atomic
    from rkpipe.workspace_claim import claim_workspace

    claim_workspace(Path.cwd())
    preflight.check_paths(cfg)
    preflight.check_calibration_file(cfg)
    for model in preflight.LOCAL_SOURCES:
        fingerprint = preflight.source_fingerprint(cfg, model)
        write_json_atomic(cfg.layout.source_fingerprint(model), fingerprint)
    tracker_up = preflight.check_tracker(cfg)
    preflight.check_remote(Path.cwd())
    if tracker_up:
        preflight.reconcile(cfg)
    preflight.remove_leftovers(cfg, Path.cwd())
    preflight.check_board(cfg)
    write_json_atomic(cfg.layout.preflight_verdict, preflight.VERDICT)


if __name__ == "__main__":
    from pathlib import Path

    from rkpipe.preflight import scrub_credentials

    scrub_credentials(Path("params.yaml"))  # before the config is read, which refuses them
    run_stage("preflight", body, tracked=False)
