"""What storage refuses: paths that could leave the root; failed writes as clear errors."""

from __future__ import annotations

import errno
import re

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError

__all__ = ["StorageTimeoutError", "check_relpath", "disk_error"]

_DRIVE = re.compile(r"^[A-Za-z]:(/|$)")  # C:/x or C: is absolute on Windows; a:1 is a name
# Never "run again": a new generate run would pay again for generations already paid.
_FINISH = (
    "finish the generations already paid with collect-pending (or `luma-prefect collect ID`); "
    "a new generate run would pay again."
)


class StorageTimeoutError(TimeoutError):
    """A storage call that passed its total deadline (an OSError, as fsspec's failures are).

    Its message is one line: what did not answer, where, and what to do.
    """

    def __init__(self, call: str, where: str, seconds: float) -> None:
        super().__init__(
            f"The storage did not answer within {seconds:g} s ({call} of {where}). Check "
            f"the storage endpoint, then {_FINISH}"
        )
        self.call = call
        self.where = where
        self.seconds = seconds


def check_relpath(relpath: str, *, allow_root: bool = False) -> str:
    """`relpath` cleaned to `a/b/c`, or LumaConfigurationError if it could leave the root."""
    text = str(relpath).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    bad = (
        "\x00" in text
        or text.startswith("/")
        or _DRIVE.match(text) is not None
        or ".." in parts
        or (not parts and not allow_root)
    )
    if bad:
        raise LumaConfigurationError(
            f"{str(relpath)[:120]!r} is not a safe path inside the destination: paths are "
            "relative, without '..', and stay inside the destination folder."
        )
    return "/".join(parts)


def disk_error(exc: OSError, where: str, *, kept: str = "") -> LumaDownloadError:
    """The LumaDownloadError for a failed write: says so plainly when the disk is full, or
    when the storage did not answer in time (`kept`: what was kept for the next run)."""
    if isinstance(exc, TimeoutError):
        within = f"within {exc.seconds:g} s" if isinstance(exc, StorageTimeoutError) else "in time"
        # Retryable: a stalled endpoint may answer again, and nothing was half written.
        return LumaDownloadError(
            f"The storage did not answer {within}: could not write {where}. Nothing was left "
            f"under the final name{kept}. Check the storage endpoint, then {_FINISH}",
            retryable=True,
        )
    if exc.errno == errno.ENOSPC:
        return LumaDownloadError(
            f"The disk is full: could not write {where}. Nothing was left under the final "
            "name. Free some space, then finish the generations already paid with "
            "collect-pending (or `luma-prefect collect ID`); a new generate run would pay again."
        )
    return LumaDownloadError(
        f"Could not write {where} ({type(exc).__name__}: {exc}). Check that the destination "
        "exists and is writable, then finish the generations already paid with "
        "collect-pending (or `luma-prefect collect ID`); a new generate run would pay again."
    )
