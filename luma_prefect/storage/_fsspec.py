"""`FsspecStorage`: files on any fsspec filesystem (s3://, memory://, ...)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from luma_prefect.storage._base import Storage, temp_name
from luma_prefect.storage._checks import check_relpath, disk_error
from luma_prefect.storage._part import PartFile

__all__ = ["FsspecStorage"]

logger = logging.getLogger("luma_prefect.storage")


class FsspecStorage(Storage):
    """Files on any fsspec filesystem (s3://, gcs://, memory://, ...)."""

    def __init__(self, url: str, **settings: Any) -> None:
        if settings:
            protocol = url.split("://", 1)[0]
            self.fs = fsspec.filesystem(protocol, **settings)
            self.base = self.fs._strip_protocol(url).rstrip("/")
        else:
            self.fs, base = fsspec.core.url_to_fs(url)
            self.base = base.rstrip("/")
        self.root = url.rstrip("/")
        # Parts are staged on local disk, in a folder per destination, so a crashed run's
        # part is found again by the next run on this machine.
        tag = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.staging = Path(tempfile.gettempdir()) / "luma-prefect-parts" / tag

    def _full(self, relpath: str, *, allow_root: bool = False) -> str:
        clean = check_relpath(relpath, allow_root=allow_root)
        return f"{self.base}/{clean}" if clean else self.base

    def size(self, relpath: str) -> int | None:
        path = self._full(relpath)
        try:
            info = self.fs.info(path)
        except (FileNotFoundError, OSError):
            return None
        return int(info.get("size") or 0) if info.get("type") == "file" else None

    def open_read(self, relpath: str) -> BinaryIO:
        return self.fs.open(self._full(relpath), "rb")

    def write_bytes(self, relpath: str, data: bytes) -> str:
        final = self._full(relpath)
        temp = temp_name(final)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        try:
            self.fs.pipe_file(temp, data)
            self.fs.mv(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.rm_file(temp)
            raise disk_error(exc, self.uri(relpath)) from exc
        return self.uri(relpath)

    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        final = self._full(relpath)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        try:
            with self.fs.open(final, "xb") as file:
                file.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            logger.warning(
                "%s cannot create files exclusively (mode 'xb'); falling back to "
                "check-then-write, which concurrent writers can race.",
                type(self.fs).__name__,
            )
            if self.fs.exists(final):
                return False
            self.write_bytes(relpath, data)
            return True

    def delete(self, relpath: str) -> bool:
        path = self._full(relpath)
        try:
            self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False

    def list(self, relprefix: str = "") -> list[str]:
        top = self._full(relprefix, allow_root=True)
        try:
            found = self.fs.find(top)
        except FileNotFoundError:
            return []
        strip = self.fs._strip_protocol
        base = strip(self.base).rstrip("/") + "/"
        return sorted(p[len(base) :] for p in map(strip, found) if p.startswith(base))

    def open_part(self, relpath: str) -> PartFile:
        clean = check_relpath(relpath)
        path = self.staging / (clean + ".part")
        return PartFile(path, f"{self.uri(clean)} (staged at {path})", self._commit_part)

    def _commit_part(self, part: Path, relpath: str) -> str:
        final = self._full(relpath)
        temp = temp_name(final)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        try:
            # Upload under a temporary name, then move: the final name is whole or absent.
            self.fs.put_file(str(part), temp)
            self.fs.mv(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.rm_file(temp)
            raise disk_error(exc, self.uri(relpath)) from exc
        return self.uri(relpath)
