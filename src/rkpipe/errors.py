"""The project's error hierarchy: every message says what failed, expected vs got, and the fix."""


class RkpipeError(Exception):
    """Base of every error the pipeline raises on purpose; the CLI prints it as one line."""


class ConfigError(RkpipeError):
    """A configuration value is unknown, out of range or inconsistent."""


class ModelSourceError(RkpipeError):
    """A model could not be acquired (missing path, package, revision)."""


class CalibrationError(RkpipeError):
    """A calibration file or source is malformed."""


class BackendError(RkpipeError):
    """A quantization backend failed; the message names the step."""


class AsrError(RkpipeError):
    """An ASR model, audio file or transcript is unusable."""


class BoardError(RkpipeError):
    """A board could not be reached, checked or benchmarked."""


class TrackingError(RkpipeError):
    """MLflow tracking failed."""


class TrackerUnreachable(TrackingError):
    """The tracking server did not answer, or answered 5xx, within ``tracking.timeout_s``: what
    a stage logs can be journaled and replayed (unlike a refusal such as HTTP 401)."""


class JournalError(TrackingError):
    """A tracking journal entry cannot be read (it names the file and what to do)."""


class ReproduceError(RkpipeError):
    """A run cannot be rebuilt (missing commit or records) or the rebuild failed."""


class RemoteError(RkpipeError):
    """The DVC remote cannot be used safely (unknown or changed host key, unreachable)."""


class ArtifactError(RkpipeError):
    """A stage's output is missing, unreadable or written by an older rkpipe."""
