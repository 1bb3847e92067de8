"""A download in progress: a local `.part` file, appended to, then committed into place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from luma_prefect.storage._checks import check_relpath, disk_error

__all__ = ["PartFile", "part_name"]

_HASH_BLOCK = 1024 * 1024
_IOV_MAX = 1024  # pieces per writev call: the POSIX minimum of IOV_MAX is 16, Linux's 1024


def part_name(path: str) -> str:
    """The name `open_part` was given, from the path of a part or of its meta alone (a
    download killed between writing the meta and the first byte leaves only the meta)."""
    return path.removesuffix(".json").removesuffix(".part")


class PartFile:
    """A download in progress: a local `.part` file, appended to, then committed into place.

    `meta` is a small JSON-able dict kept next to the part (the source it came from), so a
    later run can tell whether a left-over part may be resumed.
    """

    def __init__(self, path: Path, where: str, commit_to: Any) -> None:
        self.path = path
        self.where = where
        self._commit_to = commit_to
        self._meta_path = path.with_name(path.name + ".json")

    @property
    def size(self) -> int:
        """Bytes already in the part (0 when there is none)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_meta(self) -> dict[str, Any] | None:
        """The meta saved with the part, or None if there is none or it is unreadable."""
        try:
            data = json.loads(self._meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Save `meta` next to the part."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._meta_path.write_text(json.dumps(meta), encoding="utf-8")
        except OSError as exc:
            raise disk_error(exc, self.where) from exc

    def hash_existing(self) -> Any:
        """A sha256 object fed with the bytes already in the part, read in 1 MiB blocks."""
        digest = hashlib.sha256()
        with contextlib.suppress(FileNotFoundError), self.path.open("rb") as file:
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
        return digest

    @contextlib.contextmanager
    def writer(self, *, append: bool) -> Any:
        """A `write(data)` function into the part, appending or starting over; `data` is
        bytes or a list of pieces, written in that order (one vectored write, no join).

        A write that fails (a full disk, an I/O error) removes the part and raises
        LumaDownloadError.
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
        """Move the verified part to its final name; returns the final file's URI."""
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
        """Remove the part and its meta (nothing happens if they are gone already)."""
        for path in (self.path, self._meta_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _write_chunk(file: BinaryIO, data: Sequence[bytes]) -> None:
    # One seam for every streamed write (tests make it fail as a full disk would).
    if not hasattr(os, "writev"):  # Windows: one copy, one write
        view = memoryview(b"".join(data))
        while view:
            view = view[_accepted(file.write(view)) :]
        return
    fd = file.fileno()
    pending: list[bytes | memoryview] = [piece for piece in data if piece]
    while pending:
        done = _accepted(os.writev(fd, pending[:_IOV_MAX]))
        whole = 0
        while whole < len(pending) and done >= len(pending[whole]):
            done -= len(pending[whole])
            whole += 1
        del pending[:whole]
        if done:  # a short write ended inside this piece
            pending[0] = memoryview(pending[0])[done:]


def _accepted(written: int | None) -> int:
    if not written:  # never seen on a file, but retrying would loop forever
        raise OSError(errno.EIO, "the file accepted no bytes")
    return written


class _Writer:
    """Writes into an open part; turns a full disk into LumaDownloadError, part removed."""

    def __init__(self, file: BinaryIO, part: PartFile) -> None:
        self.file = file
        self.part = part

    def __call__(self, data: bytes | Sequence[bytes]) -> None:
        try:
            _write_chunk(self.file, [data] if isinstance(data, bytes | bytearray) else data)
        except OSError as exc:
            self.file.close()
            self.part.discard()
            raise disk_error(exc, self.part.where) from exc
