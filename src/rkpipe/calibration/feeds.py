"""The one onnxruntime ``CalibrationDataReader`` of the project: precomputed feed dicts.

Static QDQ quantization of the LLM (:mod:`rkpipe.backends.ort.static_qdq`) and of the ASR
model (:mod:`rkpipe.asr.quantizers`) both build their feeds first, then hand them over here.
"""

from __future__ import annotations

from typing import Any

from rkpipe.errors import CalibrationError


class FeedsReader:
    """``get_next`` / ``rewind`` over a list of feed dicts (onnxruntime's reader protocol)."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        if not feeds:
            raise CalibrationError(
                "no calibration inputs to feed the quantizer; check the calibration source"
            )
        self.feeds = feeds
        self._pos = 0

    def get_next(self) -> dict[str, Any] | None:
        """The next feed, or None when exhausted."""
        if self._pos >= len(self.feeds):
            return None
        self._pos += 1
        return self.feeds[self._pos - 1]

    def rewind(self) -> None:
        """Start again from the first feed."""
        self._pos = 0

    def __len__(self) -> int:
        return len(self.feeds)
