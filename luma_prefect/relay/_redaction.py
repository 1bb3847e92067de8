"""Log redaction for the HTTP libraries underneath: no key, userinfo or signature in a line.

httpx logs every request at INFO with its full URL (`https://user:pass@host/...?sig=...`),
and httpcore logs headers at DEBUG; Prefect forwards those loggers to its API when asked
(`PREFECT_LOGGING_EXTRA_LOGGERS`). A filter on each of those loggers rewrites a record
before any handler sees it: URLs lose their userinfo and query string, and every secret a
`LumaClient` was given is blanked wherever it appears.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
from pydantic import SecretStr

from luma_prefect._urls import public_url

__all__ = ["REDACTED", "install_httpx_redaction", "redact_text", "remember_secrets"]

REDACTED = "**********"
# The loggers of httpx and httpcore that may print URLs or headers.
_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
_lock = threading.Lock()
_secrets: set[str] = set()


def remember_secrets(*secrets: SecretStr) -> None:
    """Blank these values in every line the HTTP libraries log from now on."""
    with _lock:
        _secrets.update(s.get_secret_value() for s in secrets if len(s.get_secret_value()) >= 4)


def redact_text(text: str) -> str:
    """`text` with every remembered secret blanked.

    Example:
        ```python
        redact_text("echo sk-123")  # "echo **********" once sk-123 is remembered
        ```
    """
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, httpx.URL):
        return public_url(str(value))
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (bytes, tuple, list, dict)):
        return redact_text(str(value))
    return value


class _Redact(logging.Filter):
    """Rewrites a record's arguments (URLs made public, secrets blanked), never drops it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _clean(arg) for key, arg in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        return True


_FILTER = _Redact()


def install_httpx_redaction() -> None:
    """Put the redacting filter on httpx's and httpcore's loggers (once; idempotent).

    Example:
        ```python
        install_httpx_redaction()
        ```
    """
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
