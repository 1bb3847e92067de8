"""`FsspecStorage`: files on any fsspec filesystem (s3://, memory://, ...)."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import inspect
import logging
import posixpath
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import fsspec
import fsspec.asyn

from luma_prefect.storage._base import Storage, temp_name
from luma_prefect.storage._checks import StorageTimeoutError, check_relpath, disk_error
from luma_prefect.storage._part import PartFile, part_name

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
# Total deadlines of calls to the store (every retry s3fs and botocore make included). A
# ledger record or a manifest is a few KiB: a store that has not answered in a minute is
# stalled, not slow (botocore alone waits 60 s per silent attempt, then retries).
_CALL_DEADLINE_SECONDS = 60.0
# An upload of a staged file gets the longer of a floor and its size at a floor rate. 512
# KiB/s is the download's own floor (4 GiB in 2.3 h): download plus upload of the largest
# file then fit in the delivery task's 6 h backstop, and a live but slow store is not cut.
# The floor covers connecting and signing for small files (a video is ~5-20 MiB: 300 s).
_UPLOAD_DEADLINE_FLOOR_SECONDS = 300.0
_UPLOAD_FLOOR_BYTES_PER_SECOND = 512 * 1024
_HASH_BLOCK = 1024 * 1024

_warned: weakref.WeakSet[Any] = weakref.WeakSet()

_T = TypeVar("_T")


class _PastDeadline(TimeoutError):
    """`_within`'s call did not end in time (not a timeout the call raised itself)."""


def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """`call()` in a daemon thread of its own, waited for at most `seconds` (then
    `_PastDeadline`). For blocking calls to a network store that take no deadline of
    their own (sftp, smb, ftp, webhdfs, or an async store's sync `open`). A call past its
    deadline is left to end in its thread, unseen, like a request lost in flight: what it
    may still do is write a temporary name or a claim that expires, move a whole file, or
    delete one."""
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="luma-storage-call", daemon=True).start()
    if not done.wait(seconds):
        raise _PastDeadline(f"no answer within {seconds:g} s")
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


async def _stream_sha256(fs: Any, path: str) -> str:
    """SHA-256 (hex) of one streamed read of `path` (on S3 one GET: one version)."""
    file = await fs.open_async(path, "rb")
    digest = hashlib.sha256()
    try:
        while block := await file.read(_HASH_BLOCK):
            digest.update(block)
    finally:
        await file.close()
    return digest.hexdigest()


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

    Every call to a network store has a total deadline: `call_deadline_seconds` for
    records, listings and deletes, and for an upload (or the read that checks a published
    file) the longer of `upload_deadline_floor_seconds` and its size at 512 KiB/s. Past it
    the call fails as `StorageTimeoutError` (a `TimeoutError`, so an `OSError`). An async
    store's call (s3fs, gcsfs) is cancelled; a blocking one (sftp, smb, ftp) is left in a
    thread of its own. Only local disk and memory are called as they are.
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
        self.call_deadline_seconds = _CALL_DEADLINE_SECONDS
        self.upload_deadline_floor_seconds = _UPLOAD_DEADLINE_FLOOR_SECONDS

    def _call(
        self, method: str, *args: Any, remote: str, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """`self.fs.<method>(*args, **kwargs)` within a total deadline (`timeout`, by default
        `call_deadline_seconds`), or StorageTimeoutError naming `remote`.

        An async filesystem used in sync mode runs its coroutine `_<method>` through
        `fsspec.asyn.sync`, which cancels it at the deadline (its plain sync methods call
        `sync` without one). Any other store's method runs in a thread of its own
        (`_blocking`). Local disk and memory are called as they are: no network to wait for.
        """
        coroutine = self._coroutine(f"_{method}")
        seconds = self.call_deadline_seconds if timeout is None else timeout
        if coroutine is None:
            function = getattr(self.fs, method)
            return self._blocking(method, remote, seconds, lambda: function(*args, **kwargs))
        try:
            return fsspec.asyn.sync(self.fs.loop, coroutine, *args, timeout=seconds, **kwargs)
        except TimeoutError as exc:  # fsspec's FSTimeoutError, past the deadline
            raise StorageTimeoutError(method, self.fs.unstrip_protocol(remote), seconds) from exc

    def _blocking(self, call: str, remote: str, seconds: float, function: Callable[[], _T]) -> _T:
        """`function()`, a blocking call to this store about `remote`, within `seconds`
        (`_within`) unless the store is local disk or memory; else StorageTimeoutError."""
        if self.protocol in _PRIVATE:
            return function()
        try:
            return _within(seconds, function)
        except _PastDeadline as exc:
            raise StorageTimeoutError(call, self.fs.unstrip_protocol(remote), seconds) from exc

    def _coroutine(self, name: str) -> Any:
        """The filesystem's coroutine method `name` if it is async and used in sync mode."""
        fs = self.fs
        if not getattr(fs, "async_impl", False) or getattr(fs, "asynchronous", False):
            return None
        coroutine = getattr(fs, name, None)
        return coroutine if inspect.iscoroutinefunction(coroutine) else None

    def _upload_deadline(self, size: int) -> float:
        return max(self.upload_deadline_floor_seconds, size / _UPLOAD_FLOOR_BYTES_PER_SECOND)

    def _full(self, relpath: str, *, allow_root: bool = False) -> str:
        clean = check_relpath(relpath, allow_root=allow_root)
        return f"{self.base}/{clean}" if clean else self.base

    def _makedirs(self, path: str) -> None:
        # Object stores have no folders (and s3fs's makedirs would create a missing bucket).
        if not self._whole_puts:
            folder = posixpath.dirname(path)
            self._call("makedirs", folder, remote=folder, exist_ok=True)

    def size(self, relpath: str) -> int | None:
        path = self._full(relpath)
        try:
            info = self._call("info", path, remote=path)
        except StorageTimeoutError:
            raise  # a store that did not answer says nothing about the file
        except (FileNotFoundError, OSError):
            return None
        return int(info.get("size") or 0) if info.get("type") == "file" else None

    def open_read(self, relpath: str) -> BinaryIO:
        return self.fs.open(self._full(relpath), "rb")

    def read_bytes(self, relpath: str) -> bytes | None:
        # One GET: the object as it was when read, even if another machine replaces it
        # meanwhile (an open file reads ranges of one version and fails if it changes).
        path = self._full(relpath)
        try:
            return bytes(self._call("cat_file", path, remote=path))
        except FileNotFoundError:
            return None

    def sha256(self, relpath: str) -> str | None:
        # The check of a published file reads it whole: an async filesystem streams it
        # within the deadline of an upload of its size (a sync `open` has no deadline).
        size = self.size(relpath)
        if size is None:
            return None
        path = self._full(relpath)
        seconds = self._upload_deadline(size)
        if self._coroutine("open_async") is None:
            return self._blocking(
                "read", path, seconds, lambda: super(FsspecStorage, self).sha256(relpath)
            )
        try:
            return str(
                fsspec.asyn.sync(self.fs.loop, _stream_sha256, self.fs, path, timeout=seconds)
            )
        except FileNotFoundError:
            return None
        except NotImplementedError:  # no `open_async` on this filesystem
            return self._blocking(
                "read", path, seconds, lambda: super(FsspecStorage, self).sha256(relpath)
            )
        except TimeoutError as exc:
            where = self.fs.unstrip_protocol(path)
            raise StorageTimeoutError("read", where, seconds) from exc

    def write_bytes(self, relpath: str, data: bytes) -> str:
        final = self._full(relpath)
        target = final if self._whole_puts else temp_name(final)
        self._makedirs(final)
        try:
            self._call("pipe_file", target, data, remote=target)
            if target != final:
                self._move(target, final)
        except OSError as exc:
            if target != final:
                with contextlib.suppress(OSError):
                    self._call("rm_file", target, remote=target)
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

        def create() -> None:
            with self.fs.open(final, "xb") as file:
                file.write(data)

        try:
            self._blocking("create", final, self.call_deadline_seconds, create)
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            self._warn_once("refuses exclusive creation (mode 'xb'); it checks, then writes")
            if self._call("exists", final, remote=final):
                return False
            self.write_bytes(relpath, data)
            return True
        if self.protocol not in _EXCLUSIVE_XB:
            self._warn_once("may or may not create files exclusively (mode 'xb')")
        return True

    def _put_if_absent(self, path: str, data: bytes) -> bool:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._call("pipe_file", path, data, remote=path, mode="create")
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
        if self._whole_puts and not self._call("exists", path, remote=path):
            return False
        try:
            self._call("rm_file", path, remote=path)
            return True
        except FileNotFoundError:
            return False

    def list(self, relprefix: str = "") -> list[str]:
        top = self._full(relprefix, allow_root=True)
        try:
            found = self._call("find", top, remote=top)
        except FileNotFoundError:
            return []
        strip = self.fs._strip_protocol
        base = strip(self.base).rstrip("/") + "/"
        return sorted(p[len(base) :] for p in map(strip, found) if p.startswith(base))

    def open_part(self, relpath: str) -> PartFile:
        clean = check_relpath(relpath)
        path = self.staging / (clean + ".part")
        return PartFile(path, f"{self.uri(clean)} (staged at {path})", self._commit_part)

    def parts(self, relfolder: str) -> builtins.list[str]:
        clean = check_relpath(relfolder)
        folder = self.staging / clean
        found = [*folder.glob("*.part"), *folder.glob("*.part.json")] if folder.is_dir() else []
        return sorted({f"{clean}/{part_name(p.name)}" for p in found if p.is_file()})

    def _commit_part(self, part: Path, relpath: str) -> str:
        final = self._full(relpath)
        # Object stores show an upload only once it is complete (one PUT, or the end of a
        # multipart upload); elsewhere upload under a temporary name, then move.
        target = final if self._whole_puts else temp_name(final)
        self._makedirs(final)
        try:
            deadline = self._upload_deadline(part.stat().st_size)
            self._call("put_file", str(part), target, remote=target, timeout=deadline)
            if target != final:
                # A move may be a copy on the store's side: as long as the upload, at most.
                self._move(target, final, timeout=deadline)
        except OSError as exc:
            if target != final:
                with contextlib.suppress(OSError):
                    self._call("rm_file", target, remote=target)
            # The part is kept (PartFile.commit removes it only once committed, or when the
            # disk is full): the next run resumes it, and uploads it without downloading.
            raise disk_error(
                exc, self.uri(relpath), kept=f"; the staged part {part} is kept"
            ) from exc
        return self.uri(relpath)

    def _move(self, source: str, target: str, *, timeout: float | None = None) -> None:
        # AsyncFileSystem has no `_mv`: its sync `mv` is `copy` then `rm`, each a `sync`
        # call without a deadline. For one file `_mv_file` is the same copy then delete.
        if self._coroutine("_mv_file") is not None:
            self._call("mv_file", source, target, remote=source, timeout=timeout)
        else:
            seconds = self.call_deadline_seconds if timeout is None else timeout
            self._blocking("mv", source, seconds, lambda: self.fs.mv(source, target))
