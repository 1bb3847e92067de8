"""What storage refuses: paths that could leave the root; failed writes as clear errors."""

from __future__ import annotations

import errno
import re

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError

__all__ = ["check_relpath", "disk_error"]

_DRIVE = re.compile(r"^[A-Za-z]:(/|$)")  # C:/x or C: is absolute on Windows; a:1 is a name


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


def disk_error(exc: OSError, where: str) -> LumaDownloadError:
    """The LumaDownloadError for a failed write: says so plainly when the disk is full."""
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
