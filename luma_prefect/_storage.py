"""Where files go: a local folder, an fsspec URL, or a Prefect filesystem block.

`storage_for(destination)` gives a `Storage`, the small interface that the download, the
publish step and the ledger share. Every path it takes is relative to the storage's root,
and checked: no absolute paths, no `..`, nothing that resolves outside the root.

Writes are atomic: a temporary name, then a rename (or fsspec `mv`), so a reader never sees
half a file under the final name. Downloads stream into a `PartFile`: a local `.part` file
that can be appended to (HTTP Range resume) and is committed into place once verified. For
remote filesystems the part lives in a local staging folder and is uploaded with fsspec's
`put` on commit, so memory stays flat whatever the file size.

`create_exclusive` (create-if-absent, for ledgers and locks) is atomic on local disks
(`os.link` of a complete temporary file, or `O_EXCL`) and on `memory://`. On other fsspec
filesystems it opens with mode `"xb"`: atomic only where the backend implements it as a
conditional write (object stores with `If-None-Match: *`; check your backend's docs). Where
`"xb"` is refused it falls back to check-then-write, which two writers can race.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from luma_prefect._exceptions import LumaConfigurationError, LumaDownloadError

__all__ = ["PartFile", "Storage", "check_relpath", "storage_for"]

_HASH_BLOCK = 1024 * 1024
try:  # pieces per writev call; POSIX guarantees at least 16, Linux allows 1024
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - no sysconf, or no answer
    _IOV_MAX = 16
_DRIVE = re.compile(r"^[A-Za-z]:(/|$)")  # C:/x or C: is absolute on Windows; a:1 is a name


def check_relpath(relpath: str, *, allow_root: bool = False) -> str:
    """`relpath` cleaned to `a/b/c`, or LumaConfigurationError if it could leave the root.

    Example:
        ```python
        check_relpath("gen-1/video.mp4")  # "gen-1/video.mp4"
        check_relpath("../etc/passwd")  # raises LumaConfigurationError
        ```
    """
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
    """The LumaDownloadError for a failed write: says so plainly when the disk is full.

    Example:
        ```python
        except OSError as exc:
            raise disk_error(exc, "/data/luma/gen-1/video.mp4") from exc
        ```
    """
    if exc.errno == errno.ENOSPC:
        return LumaDownloadError(
            f"The disk is full: could not write {where}. Nothing was left under the final "
            "name; free some space (or choose another destination) and run again."
        )
    return LumaDownloadError(
        f"Could not write {where} ({type(exc).__name__}: {exc}). Check that the destination "
        "exists and is writable, then run again."
    )


class PartFile:
    """A download in progress: a local `.part` file, appended to, then committed into place.

    `meta` is a small JSON-able dict kept next to the part (the source it came from), so a
    later run can tell whether a left-over part may be resumed.

    Example:
        ```python
        part = storage.open_part("gen-1/video")
        with part.writer(append=False) as write:
            write(b"...")
        uri = part.commit("gen-1/video.mp4")
        ```
    """

    def __init__(self, path: Path, where: str, commit_to: Any) -> None:
        self.path = path
        self.where = where
        self._commit_to = commit_to
        self._meta_path = path.with_name(path.name + ".json")

    @property
    def size(self) -> int:
        """Bytes already in the part (0 when there is none).

        Example:
            ```python
            have = part.size
            ```
        """
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_meta(self) -> dict[str, Any] | None:
        """The meta saved with the part, or None if there is none or it is unreadable.

        Example:
            ```python
            if (part.read_meta() or {}).get("source_kind") == "video_raw": ...
            ```
        """
        try:
            data = json.loads(self._meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Save `meta` next to the part.

        Example:
            ```python
            part.write_meta({"source_kind": "video_raw", "total": 1234})
            ```
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._meta_path.write_text(json.dumps(meta), encoding="utf-8")
        except OSError as exc:
            raise disk_error(exc, self.where) from exc

    def hash_existing(self) -> Any:
        """A sha256 object fed with the bytes already in the part, read in 1 MiB blocks.

        Example:
            ```python
            digest = part.hash_existing()  # then digest.update(new bytes)
            ```
        """
        digest = hashlib.sha256()
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as file:
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
        return digest

    @contextlib.contextmanager
    def writer(self, *, append: bool) -> Any:
        """A `write(pieces)` function into the part, appending or starting over.

        `pieces` is a sequence of bytes-like objects, written in order in one system call
        where the platform has `writev` (no joining copy).

        A write that fails (a full disk, an I/O error) removes the part and raises
        LumaDownloadError.

        Example:
            ```python
            with part.writer(append=True) as write:
                write([chunk, next_chunk])
            ```
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Unbuffered: pieces go straight to the file, never through another buffer.
            file: BinaryIO = self.path.open("ab" if append else "wb", buffering=0)
        except OSError as exc:
            raise disk_error(exc, self.where) from exc
        try:
            yield _Writer(file, self)
        finally:
            file.close()

    def commit(self, relpath: str) -> str:
        """Move the verified part to its final name; returns the final file's URI.

        Example:
            ```python
            uri = part.commit("gen-1/video.mp4")
            ```
        """
        try:
            uri: str = self._commit_to(self.path, check_relpath(relpath))
        except OSError as exc:
            # A full disk can surface only now (delayed allocation); the part is useless then.
            if exc.errno == errno.ENOSPC:
                self.discard()
            raise disk_error(exc, self.where) from exc
        self.discard()
        return uri

    def discard(self) -> None:
        """Remove the part and its meta (nothing happens if they are gone already).

        Example:
            ```python
            part.discard()
            ```
        """
        for path in (self.path, self._meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write_chunk(file: BinaryIO, pieces: Sequence[bytes]) -> None:
    # One seam for every streamed write (tests make it fail as a full disk would).
    views = [memoryview(piece) for piece in pieces if piece]
    if not hasattr(os, "writev"):  # pragma: no cover - Windows
        for view in views:
            while view:
                view = view[_accepted(file.write(view)) :]
        return
    fd, first = file.fileno(), 0
    while first < len(views):
        written = _accepted(os.writev(fd, views[first : first + _IOV_MAX]))
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:  # a short write (rare on files): the rest of that piece next time
            views[first] = views[first][written:]


def _accepted(written: int | None) -> int:
    if not written:  # never seen on a file, but retrying would loop forever
        raise OSError(errno.EIO, "the file accepted no bytes")
    return written


class _Writer:
    """Writes into an open part; turns a full disk into LumaDownloadError, part removed."""

    def __init__(self, file: BinaryIO, part: PartFile) -> None:
        self.file = file
        self.part = part

    def __call__(self, pieces: Sequence[bytes]) -> None:
        try:
            _write_chunk(self.file, pieces)
        except OSError as exc:
            self.file.close()
            self.part.discard()
            raise disk_error(exc, self.part.where) from exc


class Storage(ABC):
    """A destination for files: every path is relative to `root` and checked.

    Example:
        ```python
        storage = storage_for("./luma-output")
        storage.write_bytes("gen-1/notes.txt", b"hello")
        assert storage.read_bytes("gen-1/notes.txt") == b"hello"
        ```
    """

    root: str
    """The destination, as shown to people: a folder path or a URL."""

    def uri(self, relpath: str) -> str:
        """Where `relpath` is, as a local path or a URL (for results and messages).

        Example:
            ```python
            storage.uri("gen-1/video.mp4")  # "/data/luma/gen-1/video.mp4"
            ```
        """
        return f"{self.root.rstrip('/')}/{check_relpath(relpath)}"

    @abstractmethod
    def size(self, relpath: str) -> int | None:
        """Size of the file in bytes, or None if there is no such file.

        Example:
            ```python
            storage.size("gen-1/video.mp4")
            ```
        """

    def exists(self, relpath: str) -> bool:
        """Whether a file is there.

        Example:
            ```python
            if storage.exists("gen-1/video.mp4"): ...
            ```
        """
        return self.size(relpath) is not None

    @abstractmethod
    def open_read(self, relpath: str) -> BinaryIO:
        """An open binary file to read (FileNotFoundError when absent).

        Example:
            ```python
            with storage.open_read("gen-1/video.mp4") as file:
                head = file.read(16)
            ```
        """

    def read_bytes(self, relpath: str) -> bytes | None:
        """The whole file, or None if there is no such file.

        Example:
            ```python
            record = storage.read_bytes("gen-1/.download.json")
            ```
        """
        try:
            with self.open_read(relpath) as file:
                return file.read()
        except FileNotFoundError:
            return None

    def sha256(self, relpath: str) -> str | None:
        """SHA-256 (hex) of the file, read in 1 MiB blocks; None if there is no such file.

        Example:
            ```python
            storage.sha256("gen-1/video.mp4")
            ```
        """
        digest = hashlib.sha256()
        try:
            with self.open_read(relpath) as file:
                while block := file.read(_HASH_BLOCK):
                    digest.update(block)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    @abstractmethod
    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write the file atomically (temporary name, then rename); returns its URI.

        Example:
            ```python
            storage.write_bytes("gen-1/manifest.json", b"{}")
            ```
        """

    @abstractmethod
    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        """Create the file with `data` only if it does not exist: True if this call created it.

        Example:
            ```python
            if storage.create_exclusive("ledger/abc.json", b"{}"):
                ...  # we own it
            ```
        """

    @abstractmethod
    def delete(self, relpath: str) -> bool:
        """Remove the file; True if there was one.

        Example:
            ```python
            storage.delete("gen-1/video.mp4")
            ```
        """

    @abstractmethod
    def list(self, relprefix: str = "") -> list[str]:
        """Relative paths of the files under `relprefix` (recursively), sorted.

        Example:
            ```python
            storage.list("gen-1")  # ["gen-1/.download.json", "gen-1/video.mp4"]
            ```
        """

    @abstractmethod
    def open_part(self, relpath: str) -> PartFile:
        """The `.part` file of a download of `relpath`, kept across runs for resuming.

        Example:
            ```python
            part = storage.open_part("gen-1/video")
            ```
        """


def storage_for(destination: Any) -> Storage:
    """The `Storage` for a destination given as a folder, an fsspec URL, or a Prefect block.

    Accepts a `str`/`Path` folder, a URL such as `memory://x` or `s3://bucket/prefix`
    (`file://` URLs are local folders), a `prefect.filesystems.LocalFileSystem` (its
    `basepath`) or `RemoteFileSystem` (its `basepath` and `settings`), or a `Storage`.

    Example:
        ```python
        from prefect.filesystems import RemoteFileSystem

        storage_for("./luma-output")
        storage_for("s3://my-bucket/luma")
        storage_for(RemoteFileSystem(basepath="memory://luma-test"))
        ```
    """
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    from luma_prefect._storage_backends import FsspecStorage, LocalStorage

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


def __getattr__(name: str) -> Any:
    # The backends import this module, so they are re-exported lazily (PEP 562).
    if name in ("LocalStorage", "FsspecStorage"):
        from luma_prefect import _storage_backends

        return getattr(_storage_backends, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
