"""Shared test set-up: quiet Prefect in a home of its own, one Prefect API for the run
(on PostgreSQL when it is installed), local S3."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Prefect is imported anywhere: no telemetry (it logs a network error offline).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The tests are guests, like the CLI's local runs (luma_prefect/_prefect_home.py): unless
# PREFECT_API_URL names a server, Prefect gets a temporary home and database of its own,
# set before it is imported, so it never reads, creates or migrates the user's ~/.prefect.
SESSION_API = "LUMA_TESTS_SESSION_API"
"""Set (to the cluster's folder) with PREFECT_API_URL when that URL is the run's own server
on PostgreSQL (see `SessionAPI`), so the workers still take a private home."""

if not os.environ.get("PREFECT_API_URL") or os.environ.get(SESSION_API):
    _home = Path(tempfile.mkdtemp(prefix="luma-tests-prefect-home-"))
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(_home)
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
        f"sqlite+aiosqlite:///{_home / 'prefect.db'}"
    )
    # Every Prefect client builds an SSL context, by default from certifi's ~140 roots:
    # 26 ms of CPU each, though the API here is http on loopback. Prefect makes thousands
    # per run (one per flow run's result store, one per lease-renewal thread of each relay
    # request's concurrency slot). A CA file of one certificate makes each 0.7 ms: the
    # flows and tasks tests took 126 CPU-s instead of 150-164 (alternated pairs, -n 2).
    try:
        import trustme
    except ImportError:  # a dev dependency: without it, only slower
        pass
    else:
        _api_ca = _home / "prefect-api-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(_api_ca))
        os.environ.setdefault("PREFECT_API_SSL_CERT_FILE", str(_api_ca))

# The simulator's own pytest plugin, as users enable it: `luma_simulator` and
# `luma_simulator_factory` for every test folder.
pytest_plugins = ["luma_prefect.simulator.pytest_plugin"]


SERVER_STARTUP_TIMEOUT = 90.0
"""Seconds a Prefect API may take to answer: several starting at once on 2 busy cores took
up to 29 s."""


class SessionAPI:
    """One Prefect server on a throw-away PostgreSQL for the whole run, all xdist workers.

    Why not Prefect's own harness in each worker: its SQLite API answers 503 ("database is
    locked") to a concurrency-slot increment when another write lands between the
    endpoint's read and its update (a deferred SQLite transaction; in the runs traced, the
    first increment of each flow run), and Prefect's client waits 2 s before it retries.
    The relay requests of our tasks take such slots, so the tasks and flows tests spent
    most of their time asleep: `tests/tasks` took 125 s in one process on the harness (its
    start included), 30 s on this server. One server instead of one per worker also saves
    a start (about 13 CPU-s) per worker.

    Started by the process that runs pytest (the xdist controller) in a thread, while the
    workers start: PREFECT_API_URL names it from the beginning (its port is chosen first),
    and each process's first test waits until it answers (`_session_api_ready`). Stopped
    with PostgreSQL at the end, its folder and logs removed. The thread works from a copy
    of the environment: pytest changes `os.environ` meanwhile.
    """

    def __init__(self) -> None:
        from tests.e2e._postgres import make_folder
        from tests.e2e._stack import Processes, _free_port

        self.folder = make_folder()
        self.failed = self.folder / "failed"
        logs = self.folder / "logs"
        logs.mkdir()
        self.processes = Processes(logs=logs)
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._environ: dict[str, str] = {}
        self._thread = threading.Thread(target=self._start, name="session-prefect-api")

    def start(self) -> None:
        self._environ = dict(os.environ)
        self._thread.start()

    def _start(self) -> None:
        from tests.e2e._postgres import start_postgres_stack

        try:
            asyncio.run(
                start_postgres_stack(
                    self.processes, self.folder, api_port=self.port, environ=self._environ
                )
            )
        except BaseException as error:  # told to the tests, which fail their set-up with it
            self.failed.write_text(f"{type(error).__name__}: {error}", encoding="utf-8")

    def stop(self) -> None:
        from tests.e2e._postgres import stop_postgres_stack

        if self._thread.ident is not None:
            self._thread.join(SERVER_STARTUP_TIMEOUT + 60)
        stop_postgres_stack(self.processes, self.folder)


_session_api_key = pytest.StashKey[SessionAPI]()


def pytest_configure(config: pytest.Config) -> None:
    # Only the process that runs pytest starts it (workers inherit the environment), only
    # when no server was named, and only when PostgreSQL can run here. Otherwise, or with
    # LUMA_TESTS_PREFECT_SERVER=harness, each process starts Prefect's own harness on
    # first use (`prefect_harness`).
    if hasattr(config, "workerinput") or os.environ.get("PREFECT_API_URL"):
        return
    if config.option.collectonly:  # no test runs: no server (it cost 5 s and 10 CPU-s)
        return
    if os.environ.get("LUMA_TESTS_PREFECT_SERVER", "postgres") == "harness":
        return
    from tests.e2e._postgres import why_no_postgres

    if why_no_postgres() is not None:
        return
    api = SessionAPI()
    config.stash[_session_api_key] = api
    os.environ["PREFECT_API_URL"] = api.api_url
    os.environ[SESSION_API] = str(api.folder)
    if "prefect.context" in sys.modules:  # Prefect read its settings already: again
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    api.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    api = config.stash.get(_session_api_key, None)
    if api is not None:
        del config.stash[_session_api_key]
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop(SESSION_API, None)
        api.stop()


def _wait_for_session_api(api_url: str, folder: Path) -> None:
    import httpx

    deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT + 60
    while True:
        failed = folder / "failed"
        if failed.exists():
            raise RuntimeError(
                "the session's Prefect server on PostgreSQL did not start: "
                f"{failed.read_text(encoding='utf-8')} (logs in {folder / 'logs'})"
            )
        try:
            # trust_env=False: loopback needs no proxy (one set for the machine would
            # otherwise get this probe and never answer it), as in `_wait_for_health`.
            if httpx.get(f"{api_url}/health", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the session's Prefect server never answered at {api_url}")
        time.sleep(0.2)  # a wait on another process's start-up, not on test logic


def _drain_logs_and_events() -> None:
    """Send Prefect's queued logs and events while the server still answers, as
    `prefect_test_harness` does before it stops its own (else Prefect's exit hook finds the
    server gone and prints "All connection attempts failed")."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # the log worker never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


@pytest.fixture(scope="session", autouse=True)
def _session_api_ready() -> Iterator[None]:
    """With the run's server (`SessionAPI`), every test waits until it answers: Prefect's
    settings name it from the start, so a test reaching the API without `prefect_harness`
    would otherwise meet a server still starting."""
    folder = os.environ.get(SESSION_API)
    if not folder:
        yield
        return
    _wait_for_session_api(os.environ["PREFECT_API_URL"], Path(folder))
    yield
    _drain_logs_and_events()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A Prefect API for the session: the run's server on PostgreSQL when there is one
    (`SessionAPI`, ready before any test), else Prefect's embedded harness on a temporary
    SQLite database."""
    if os.environ.get(SESSION_API):
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=int(SERVER_STARTUP_TIMEOUT)):
        yield


RELAY_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "relay"
"""Relay answer bodies, one JSON file per shape (see tests/fixtures/README.md)."""


@pytest.fixture
def load_fixture() -> Callable[[str], Any]:
    """Read one JSON file of tests/fixtures/relay by name."""

    def load(name: str) -> Any:
        return json.loads((RELAY_FIXTURES / name).read_text(encoding="utf-8"))

    return load


class LocalS3:
    """moto's S3 in server mode on 127.0.0.1, served from a thread of this process.

    Clients reach it over real HTTP with s3fs (`settings()`), as they would reach AWS S3
    or MinIO; any key and secret are accepted.
    """

    key = "luma-test-key"
    secret = "luma-test-secret"

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def one_request_at_a_time(environ: Any, start_response: Any) -> Any:
            # moto checks `If-None-Match: *`, then stores: two threads can pass the check
            # together (3 double winners in 500 races with a 1 µs GIL switch interval, none
            # in 1000 with the default). S3 decides a conditional write atomically; one
            # request at a time makes moto do the same.
            with lock:
                return app(environ, start_response)

        class QuietHandler(MotoRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                pass

        self._server = make_server(
            "127.0.0.1", 0, one_request_at_a_time, threaded=True, request_handler=QuietHandler
        )
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-s3", daemon=True
        )
        self._thread.start()

    def settings(self) -> dict[str, Any]:
        """s3fs settings for this server: a RemoteFileSystem block's `settings`."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server (no shared instance, no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False, **self.settings()
        )

    def buckets(self) -> list[str]:
        return sorted(str(name).rstrip("/") for name in self.filesystem().ls(""))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(30)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """A local S3-compatible server for the session; no bucket is left on it afterwards."""
    # botocore never looks for EC2 instance metadata (an address off loopback).
    saved = os.environ.get("AWS_EC2_METADATA_DISABLED")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    server = LocalS3()
    try:
        yield server
        left = server.buckets()
        assert not left, f"buckets left behind on the local S3 server: {left}"
    finally:
        server.close()
        if saved is None:
            os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        else:
            os.environ["AWS_EC2_METADATA_DISABLED"] = saved


@pytest.fixture
def s3_bucket(s3_server: LocalS3) -> Iterator[str]:
    """A new empty bucket as `s3://name`, removed with everything in it after the test."""
    fs = s3_server.filesystem()
    name = f"luma-{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    try:
        yield f"s3://{name}"
    finally:
        fs.rm(name, recursive=True)
        assert name not in s3_server.buckets()
