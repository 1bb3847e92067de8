"""`FsspecStorage`: files on any fsspec filesystem (s3://, memory://, ...)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import tempfile
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from luma_prefect.storage._base import Storage, temp_name
from luma_prefect.storage._checks import check_relpath, disk_error
from luma_prefect.storage._part import PartFile

__all__ = ["FsspecStorage"]

logger = logging.getLogger("luma_prefect.storage")

# Object stores where one PUT makes the whole object appear at once (or not at all), and
# where s3fs sends `If-None-Match: *` for `pipe_file(mode="create")`: a conditional write
# the store itself decides, so two machines racing for one key get one winner.
_OBJECT_STORES = frozenset({"s3", "s3a"})
# Filesystems whose mode "xb" is an exclusive create we have checked: local disk (O_EXCL)
# and memory (one process).
_EXCLUSIVE_XB = frozenset({"file", "local", "memory"})
# Protocols whose listings no other machine changes behind our back.
_PRIVATE = frozenset({"file", "local", "memory"})
# S3 answers 409 ConditionalRequestConflict to a conditional PUT that races another write
# of the key, and asks for a retry; the retry then meets the winner (412).
_CONFLICT_RETRIES = 3

_warned: weakref.WeakSet[Any] = weakref.WeakSet()


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs error (botocore's ClientError is its cause)."""
    response = getattr(exc.__cause__, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code")
        return str(code) if code else None
    return None


class FsspecStorage(Storage):
    """Files on any fsspec filesystem (s3://, gcs://, memory://, ...).

    Listings are not cached (fsspec's `use_listings_cache=False` unless `settings` say
    otherwise): other machines change the ledger, and a cached listing made s3fs read a
    record another machine had rewritten as expired, or miss a new one.

    """

    def __init__(self, url: str, **settings: Any) -> None:
        self.protocol = _protocol(url)
        if self.protocol not in _PRIVATE:
            settings.setdefault("use_listings_cache", False)
        self.fs, base = fsspec.core.url_to_fs(url, **settings)
        self.base = base.rstrip("/")
        self.root = url.rstrip("/")
        # On object stores a PUT is already all-or-nothing: no temporary name, no copy.
        self._whole_puts = self.protocol in _OBJECT_STORES
        # Parts are staged on local disk, in a folder per destination, so a crashed run's
        # part is found again by the next run on this machine.
        tag = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.staging = Path(tempfile.gettempdir()) / "luma-prefect-parts" / tag

    def _full(self, relpath: str, *, allow_root: bool = False) -> str:
        clean = check_relpath(relpath, allow_root=allow_root)
        return f"{self.base}/{clean}" if clean else self.base

    def _makedirs(self, path: str) -> None:
        # Object stores have no folders (and s3fs's makedirs would create a missing bucket).
        if not self._whole_puts:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)

    def size(self, relpath: str) -> int | None:
        path = self._full(relpath)
        try:
            info = self.fs.info(path)
        except (FileNotFoundError, OSError):
            return None
        return int(info.get("size") or 0) if info.get("type") == "file" else None

    def open_read(self, relpath: str) -> BinaryIO:
        return self.fs.open(self._full(relpath), "rb")

    def read_bytes(self, relpath: str) -> bytes | None:
        # One GET: the object as it was when read, even if another machine replaces it
        # meanwhile (an open file reads ranges of one version and fails if it changes).
        try:
            return bytes(self.fs.cat_file(self._full(relpath)))
        except FileNotFoundError:
            return None

    def write_bytes(self, relpath: str, data: bytes) -> str:
        final = self._full(relpath)
        target = final if self._whole_puts else temp_name(final)
        self._makedirs(final)
        try:
            self.fs.pipe_file(target, data)
            if target != final:
                self.fs.mv(target, final)
        except OSError as exc:
            if target != final:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(target)
            raise disk_error(exc, self.uri(relpath)) from exc
        return self.uri(relpath)

    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        """Create-if-absent: a conditional PUT on S3, mode "xb" elsewhere.

        Where the filesystem cannot be trusted to make that atomic it says so, once per
        filesystem, in a warning: two writers there can both believe they created the file.
        """
        final = self._full(relpath)
        if self.protocol in _OBJECT_STORES:
            return self._put_if_absent(final, data)
        self._makedirs(final)
        try:
            with self.fs.open(final, "xb") as file:
                file.write(data)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            self._warn_once("refuses exclusive creation (mode 'xb'); it checks, then writes")
            if self.fs.exists(final):
                return False
            self.write_bytes(relpath, data)
            return True
        if self.protocol not in _EXCLUSIVE_XB:
            self._warn_once("may or may not create files exclusively (mode 'xb')")
        return True

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                code = _s3_error_code(exc)
                # s3fs says FileExistsError only when the answer names the failed condition;
                # a bare 412 to our only condition (If-None-Match: *) means the same.
                if code == "PreconditionFailed":
                    return False
                if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _warn_once(self, what: str) -> None:
        if self.fs in _warned:
            return
        _warned.add(self.fs)
        logger.warning(
            "%s (%s) %s: two writers can both create the same file, so ledger claims there "
            "are not atomic. Run one sweep at a time on %s.",
            type(self.fs).__name__,
            self.protocol,
            what,
            self.root,
        )

    def delete(self, relpath: str) -> bool:
        path = self._full(relpath)
        # S3 deletes a missing key without complaint: look first, to answer truthfully.
        if self._whole_puts and not self.fs.exists(path):
            return False
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
        # Object stores show an upload only once it is complete (one PUT, or the end of a
        # multipart upload); elsewhere upload under a temporary name, then move.
        target = final if self._whole_puts else temp_name(final)
        self._makedirs(final)
        try:
            self.fs.put_file(str(part), target)
            if target != final:
                self.fs.mv(target, final)
        except OSError as exc:
            if target != final:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(target)
            raise disk_error(exc, self.uri(relpath)) from exc
        return self.uri(relpath)
