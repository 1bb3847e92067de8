"""The two kinds of `Storage`: a local folder, and any fsspec filesystem.

Use `storage_for(destination)` rather than these classes: it picks the right one for a
folder, a URL or a Prefect filesystem block.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import secrets
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._storage import PartFile, Storage, check_relpath, disk_error

__all__ = ["FsspecStorage", "LocalStorage"]

logger = logging.getLogger("luma_prefect.storage")


def _temp_name(path: str) -> str:
    head, name = posixpath.split(path)
    return posixpath.join(head, f".{name}.tmp-{secrets.token_hex(4)}")


class LocalStorage(Storage):
    """Files in a local folder (created when first written to).

    Example:
        ```python
        storage = LocalStorage("./luma-output")
        ```
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.base = Path(root).expanduser().resolve()
        self.root = str(self.base)

    def path(self, relpath: str, *, allow_root: bool = False) -> Path:
        """The local path of `relpath`; refuses any that resolves outside the root (symlinks).

        Example:
            ```python
            storage.path("gen-1/video.mp4")  # PosixPath("/data/luma/gen-1/video.mp4")
            ```
        """
        clean = check_relpath(relpath, allow_root=allow_root)
        path = self.base / clean if clean else self.base
        resolved = path.resolve()
        if resolved != self.base and self.base not in resolved.parents:
            raise LumaConfigurationError(
                f"{relpath!r} resolves to {resolved}, outside the destination {self.base}."
            )
        return path

    def uri(self, relpath: str) -> str:
        return str(self.path(relpath))

    def size(self, relpath: str) -> int | None:
        path = self.path(relpath)
        return path.stat().st_size if path.is_file() else None

    def open_read(self, relpath: str) -> BinaryIO:
        return self.path(relpath).open("rb")

    def write_bytes(self, relpath: str, data: bytes) -> str:
        final = self.path(relpath)
        temp = self._write_temp(final, data)
        os.replace(temp, final)
        return str(final)

    def _write_temp(self, final: Path, data: bytes) -> Path:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(_temp_name(str(final)))
        try:
            with temp.open("xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise disk_error(exc, str(final)) from exc
        return temp

    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        final = self.path(relpath)
        temp = self._write_temp(final, data)
        try:
            # A hard link appears complete, or not at all: readers never see a half file.
            os.link(temp, final)
            return True
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: O_EXCL is still an atomic create-if-absent.
            try:
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, relpath: str) -> bool:
        try:
            self.path(relpath).unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self, relprefix: str = "") -> list[str]:
        top = self.path(relprefix, allow_root=True)
        if top.is_file():
            return [top.relative_to(self.base).as_posix()]
        found = (p for p in top.rglob("*") if p.is_file()) if top.is_dir() else ()
        return sorted(p.relative_to(self.base).as_posix() for p in found)

    def open_part(self, relpath: str) -> PartFile:
        path = self.path(relpath + ".part")
        return PartFile(path, str(path), self._commit_part)

    def _commit_part(self, part: Path, relpath: str) -> str:
        final = self.path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: flushing a large video costs as much as downloading it. A process crash
        # cannot leave a half file under the final name (rename is atomic); after a power
        # loss one could, but a rerun checks size and sha256 before trusting any file.
        os.replace(part, final)
        return str(final)


class FsspecStorage(Storage):
    """Files on any fsspec filesystem (s3://, gcs://, memory://, ...).

    Example:
        ```python
        storage = FsspecStorage("memory://luma-test")
        storage = FsspecStorage("s3://bucket/luma", key="...", secret="...")
        ```
    """

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
        return self.fs.open(self._full(relpath), "rb")  # type: ignore[no-any-return]

    def write_bytes(self, relpath: str, data: bytes) -> str:
        final = self._full(relpath)
        temp = _temp_name(final)
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
        temp = _temp_name(final)
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
