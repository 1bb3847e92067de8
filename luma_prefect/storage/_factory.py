"""`storage_for`: the right `Storage` for a folder, an fsspec URL or a Prefect block."""

from __future__ import annotations

import os
from typing import Any

import fsspec

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect.storage._base import Storage
from luma_prefect.storage._fsspec import FsspecStorage
from luma_prefect.storage._local import LocalStorage

__all__ = ["storage_for"]


def storage_for(destination: Any) -> Storage:
    """The `Storage` for a destination given as a folder, an fsspec URL, or a Prefect block.

    Accepts a `str`/`Path` folder, a URL such as `memory://x` or `s3://bucket/prefix`
    (`file://` URLs are local folders), a `prefect.filesystems.LocalFileSystem` (its
    `basepath`) or `RemoteFileSystem` (its `basepath` and `settings`), or a `Storage`.
    """
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    if isinstance(destination, Storage):
        return destination
    if isinstance(destination, LocalFileSystem):
        return LocalStorage(destination.basepath or ".")
    if isinstance(destination, RemoteFileSystem):
        return FsspecStorage(destination.basepath, **destination.settings)
    if isinstance(destination, os.PathLike):
        return LocalStorage(destination)
    if isinstance(destination, str) and destination.strip():
        text = destination.strip()
        if "://" not in text:
            return LocalStorage(text)
        if text.lower().startswith("file://"):
            return LocalStorage(fsspec.core.url_to_fs(text)[1])
        return FsspecStorage(text)
    raise LumaConfigurationError(
        "destination must be a folder, an fsspec URL (s3://..., memory://...), a "
        f"LocalFileSystem or RemoteFileSystem block (got {type(destination).__name__})."
    )
