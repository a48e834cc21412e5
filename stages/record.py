"""DVC stage record: sha256 of every pipeline output, logged to the variant's run."""

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.reproduce import record_outputs

    record_outputs(cfg, run)


if __name__ == "__main__":
    run_stage("record", body)
