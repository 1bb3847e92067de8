"""Shared test set-up: quiet Prefect in a home of its own, one embedded Prefect API per
session, local S3."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
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
if not os.environ.get("PREFECT_API_URL"):
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


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's embedded API with a temporary database, started once for the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
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
