"""A recording fake of Rockchip's rknn-toolkit2 package (``rknn.api``) for contract tests.

Put ``tests/contract/fake_rknn`` on ``PYTHONPATH`` of the interpreter that runs
``rkpipe/asr/rknn_worker.py``. Environment:

* ``FAKE_RKNN_RECORD``: a file receiving one JSON line per API call
  (``{"method": ..., "args": {...}}``, the arguments as passed, arrays as their shapes).
* ``FAKE_RKNN_FAIL=<method>``: that method prints an error and returns -1.
* ``FAKE_RKNN_CRASH=<method>``: the process exits with ``os._exit(3)`` inside that method.
"""

__version__ = "2.5.0"
