"""DVC stage host_fingerprint (always runs): the facts of this host and of the board that change
a measurement, written canonically so that DVC reruns the measuring stages on another machine
and keeps them cached on this one."""

import logging

from rkpipe.stage import run_stage


def body(cfg, run):
    from rkpipe.board.fingerprint import board_fingerprint
    from rkpipe.hostinfo import (
        describe,
        host_fingerprint,
        isa_warnings,
        write_fingerprint,
    )  # fmt: skip

    host = write_fingerprint(cfg.layout.host_fingerprint, host_fingerprint(cfg.eval.threads))
    log = logging.getLogger("rkpipe.host_fingerprint")
    log.info("host %s: %s", host["id"], describe(host))
    for warning in isa_warnings(host):
        log.warning("this host has %s", warning)
    board = board_fingerprint(cfg.board, host, cfg.bench.threads)
    write_fingerprint(cfg.layout.board_fingerprint, board)


if __name__ == "__main__":
    run_stage("host_fingerprint", body, tracked=False)
