"""Keep credentials out of what the pipeline prints and logs.

Passwords are taken only from the environment (``MLFLOW_TRACKING_PASSWORD``, ``HF_TOKEN`` ...);
a config URI with a password is refused (:class:`rkpipe.config.domain.Uri`). What libraries
print is still filtered: ``HF_ENDPOINT=https://user:pass@host`` reaches the datasets library's
retry warnings, so every log record and warning of a stage passes :class:`RedactingFilter`.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
# scheme://<userinfo>@ : a password, or a token given as the user name (https://token@host)
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
)


def redact_uri(text: str) -> str:
    """``text`` (a URI, or any text holding URIs) with each ``userinfo@`` replaced by ``***@``."""
    return _CREDENTIALS.sub(rf"\1{MASK}@", str(text))


def redact_text(text: str) -> str:
    """``text`` with URI passwords and the values of secret environment variables masked."""
    text = redact_uri(text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 6:  # a short value would mask ordinary words
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and traceback) with :func:`redact_text`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
