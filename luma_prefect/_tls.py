"""One SSL context per process and verify setting, shared by the relay and media clients."""

from __future__ import annotations

import functools
import os
import ssl

import httpx

__all__ = ["Verify", "ssl_context"]

Verify = bool | str
"""TLS verification: True (the certifi bundle, or SSL_CERT_FILE/SSL_CERT_DIR), False, or the
path of a CA bundle file (or directory)."""


def ssl_context(verify: Verify = True) -> ssl.SSLContext:
    """The process's SSL context for `verify`, built once and then shared.

    Loading a CA bundle costs about 20 ms of CPU; built per client it was 46 % of a flow's
    event-loop time (issue #12). Contexts are safe to share between clients and threads.

    Example:
        ```python
        httpx.AsyncClient(verify=ssl_context(True))
        ```
    """
    env = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return _context(verify, env if verify is True else (None, None))


@functools.lru_cache(maxsize=16)
def _context(verify: Verify, env: tuple[str | None, str | None]) -> ssl.SSLContext:
    if isinstance(verify, str):
        path = os.path.expanduser(verify)
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    return httpx.create_ssl_context(verify=bool(verify))
