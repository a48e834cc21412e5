"""Peak resident memory of this process, over its life or inside one block."""

from __future__ import annotations

# One implementation, shared with the engines that run on boards.
from rkpipe.engines.engine_shared import peak_rss_mb

__all__ = ["PeakRss", "peak_rss_mb"]


class PeakRss:
    """Context manager measuring this process's peak resident memory inside the block.

    On Linux it resets the kernel's high-water mark (``/proc/self/clear_refs``) on entry
    and reads ``VmHWM`` on exit; elsewhere (or if the reset is refused) it falls back to
    the process-lifetime peak of ``getrusage``. ``peak_mb`` is in MB (10^6 bytes).
    """

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self.since_start = False

    def __enter__(self) -> PeakRss:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.since_start = True
        except OSError:
            self.since_start = False
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = peak_rss_mb()
