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
(`os.link` of a complete temporary file, or `O_EXCL`), on `memory://`, and on `s3://`
(s3fs >= 2025.7: a PUT with `If-None-Match: *`, which the store decides; AWS S3, MinIO,
R2 and moto honour it). On other fsspec filesystems it opens with mode `"xb"`, atomic only
where the backend makes it so, and where `"xb"` is refused it checks, then writes; either
way it warns once per filesystem that two writers may both win there.
"""

from __future__ import annotations

import hashlib
import posixpath
import secrets
from abc import ABC, abstractmethod
from typing import BinaryIO

from luma_prefect.storage._checks import check_relpath
from luma_prefect.storage._part import PartFile

__all__ = ["Storage", "temp_name"]

_HASH_BLOCK = 1024 * 1024


def temp_name(path: str) -> str:
    """A hidden name beside `path` for writing a file before renaming it into place."""
    head, name = posixpath.split(path)
    return posixpath.join(head, f".{name}.tmp-{secrets.token_hex(4)}")


class Storage(ABC):
    """A destination for files: every path is relative to `root` and checked."""

    root: str
    """The destination, as shown to people: a folder path or a URL."""

    def uri(self, relpath: str) -> str:
        """Where `relpath` is, as a local path or a URL (for results and messages)."""
        return f"{self.root.rstrip('/')}/{check_relpath(relpath)}"

    @abstractmethod
    def size(self, relpath: str) -> int | None:
        """Size of the file in bytes, or None if there is no such file."""

    def exists(self, relpath: str) -> bool:
        """Whether a file is there."""
        return self.size(relpath) is not None

    @abstractmethod
    def open_read(self, relpath: str) -> BinaryIO:
        """An open binary file to read (FileNotFoundError when absent)."""

    def read_bytes(self, relpath: str) -> bytes | None:
        """The whole file, or None if there is no such file."""
        try:
            with self.open_read(relpath) as file:
                return file.read()
        except FileNotFoundError:
            return None

    def sha256(self, relpath: str) -> str | None:
        """SHA-256 (hex) of the file, read in 1 MiB blocks; None if there is no such file."""
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
        """Write the file atomically (temporary name, then rename); returns its URI."""

    @abstractmethod
    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        """Create the file with `data` only if it does not exist: True if this call created it."""

    @abstractmethod
    def delete(self, relpath: str) -> bool:
        """Remove the file; True if there was one."""

    @abstractmethod
    def list(self, relprefix: str = "") -> list[str]:
        """Relative paths of the files under `relprefix` (recursively), sorted."""

    @abstractmethod
    def open_part(self, relpath: str) -> PartFile:
        """The `.part` file of a download of `relpath`, kept across runs for resuming."""
