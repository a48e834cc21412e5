"""A recording fake of Rockchip's rkllm-toolkit package (``rkllm.api``) for contract tests.

Put ``tests/contract/fake_rkllm`` on ``PYTHONPATH`` of the interpreter that runs
``rkpipe/backends/rkllm/worker.py``. Environment:

* ``FAKE_RKLLM_VERSION`` (default ``1.3.0``): the toolkit version to imitate (signatures,
  platforms, algorithms of 1.1 / 1.2 / 1.3). It is also ``rkllm.__version__``, the worker's
  fallback. The tests additionally create ``rkllm_toolkit-<version>.dist-info/METADATA`` in
  a temporary directory on ``PYTHONPATH`` so that ``importlib.metadata.version("rkllm-toolkit")``
  (the worker's first choice) answers the same version; without it the fallback is used.
* ``FAKE_RKLLM_RECORD``: a file that receives one JSON line per API call
  (``{"method": ..., "args": {...}}``, the arguments as passed).
* ``FAKE_RKLLM_FAIL=load|build|export``: that step returns -1.
* ``FAKE_RKLLM_CRASH=load|build|export``: the process exits with ``os._exit(3)`` (export:
  after writing part of the file).
* ``FAKE_RKLLM_OOM=load|build|export``: the process SIGKILLs itself, like the OOM killer.
* ``FAKE_RKLLM_NO_LOGITS=1``: ``RKLLM`` has no ``get_logits`` (as on an arm64 host).
* ``FAKE_RKLLM_CUDA=1``: this host has a GPU: ``load_huggingface(device="cuda")`` works, which
  ``grq`` needs (the guides: grq "must use the GPU").
"""

import os

__version__ = os.environ.get("FAKE_RKLLM_VERSION", "1.3.0")
