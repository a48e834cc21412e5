"""rkllm-toolkit backend (Rockchip NPU ``.rkllm`` models), run in the toolkit's own interpreter.

Registered in :mod:`rkpipe.backends` as ``"rkllm": "rkpipe.backends.rkllm:RkllmBackend"``.
``worker.py`` and ``protocol.py`` are stdlib-only: the worker runs by file path in the
interpreter that has Rockchip's wheel installed.
"""

from rkpipe.backends.rkllm.backend import RkllmBackend, WorkerRun

__all__ = ["RkllmBackend", "WorkerRun"]
