"""Every stage runs with a fixed PYTHONHASHSEED, whatever the caller's environment."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = (
    "from rkpipe.stage import ensure_fixed_hash_seed; ensure_fixed_hash_seed(); "
    "import os; print(os.environ['PYTHONHASHSEED'], hash('rkpipe'), sorted({'a', 'b', 'c'}))"
)


def test_stage_reexecutes_with_a_fixed_hash_seed() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
        ).stdout  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0].startswith("0 ") and runs[0] == runs[1]
