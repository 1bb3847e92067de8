"""A Prefect server on a real PostgreSQL, for tests of Prefect run the way it runs at scale.

PostgreSQL comes from Debian's `postgresql` package (`.ci/install-system-packages` installs
it). Each session makes a throw-away cluster: `initdb` in a new temporary folder, the
server on 127.0.0.1 and a free port, trust authentication, no fsync. PostgreSQL refuses to
run as root, so as root it runs as the `postgres` user (setpriv), which owns the folder.
Then `prefect server start` runs on it (PREFECT_API_DATABASE_CONNECTION_URL with asyncpg).

Both run in process groups of their own (`Processes` of `_stack.py`); `stop_postgres_stack`
stops the server, then PostgreSQL, then removes the folder, also after a failed test.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._stack import (
    Child,
    Processes,
    _child_env,
    _free_port,
    _wait_for_health,
    command,
    eventually,
)

DATABASE = "prefect"
ROLE = "luma"


def postgres_bindir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` (Debian), else `initdb`'s folder."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def why_no_postgres() -> str | None:
    """Why this machine cannot run the Postgres-backed tests, or None when it can."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL is not installed (Debian: apt-get install postgresql, which "
            ".ci/install-system-packages does as root)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` user to run PostgreSQL as"
    if command("prefect") is None:
        return "the `prefect` command line is not installed"
    return None


@dataclass
class PostgresStack:
    """PostgreSQL and a Prefect server on it."""

    folder: Path
    database_url: str
    """The database as asyncpg takes it (`postgresql://...`)."""
    api_url: str
    env: dict[str, str]
    """The environment of a process that uses this server (PREFECT_API_URL set)."""
    processes: Processes
    postgres: Child
    server: Child


def _as_postgres_user() -> list[str]:
    """The prefix that runs a command as `postgres` when we are root (nothing otherwise)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


async def _create_database(port: int, postgres: Child) -> None:
    import asyncpg

    async def connect() -> object | None:
        assert postgres.popen.poll() is None, f"PostgreSQL exited\n{postgres.tail()}"
        try:
            return await asyncpg.connect(
                host="127.0.0.1", port=port, user=ROLE, database="postgres", timeout=5
            )
        except (OSError, asyncpg.PostgresError):
            return None

    connection = await eventually(connect, "PostgreSQL to accept connections", 60.0, 0.2)
    try:
        await connection.execute(f"CREATE DATABASE {DATABASE}")  # type: ignore[attr-defined]
    finally:
        await connection.close()  # type: ignore[attr-defined]


def make_folder() -> Path:
    """A new folder for one cluster; not under pytest's temporary folder (private to root)."""
    return Path(tempfile.mkdtemp(prefix="luma-postgres-"))


async def start_postgres(
    processes: Processes, folder: Path, environ: Mapping[str, str] | None = None
) -> tuple[Child, int]:
    """Initialise and start PostgreSQL in `folder` with an empty database `prefect`; the
    server's process and port, once it accepts connections. `environ`: see `_child_env`."""
    bindir = postgres_bindir()
    assert bindir is not None, why_no_postgres()
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
    as_postgres = _as_postgres_user()
    env = {**(os.environ if environ is None else environ), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    initdb = subprocess.run(
        [
            *as_postgres,
            str(bindir / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            ROLE,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert initdb.returncode == 0, f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}"
    port = _free_port()
    postgres = processes.start(
        "postgres",
        [
            *as_postgres,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(sockets),
            # A throw-away database: durability is not what these tests are about.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ],
        env,
    )
    await _create_database(port, postgres)
    return postgres, port


def database_url(port: int) -> str:
    """The database of `start_postgres` as Prefect's server takes it (asyncpg)."""
    return f"postgresql+asyncpg://{ROLE}@127.0.0.1:{port}/{DATABASE}"


async def start_postgres_stack(
    processes: Processes,
    folder: Path,
    api_port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> PostgresStack:
    """Initialise and start PostgreSQL in `folder`, then a Prefect server on it (on
    `api_port`, else a free port); wait for the server's health. `environ`: see
    `_child_env`."""
    postgres, port = await start_postgres(processes, folder, environ)
    home = folder / "prefect-home"
    home.mkdir()
    server_env = _child_env(home, environ)
    server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url(port)
    prefect_cli = command("prefect")
    assert prefect_cli is not None
    api_port = api_port or _free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    server = processes.start(
        "prefect-server-postgres",
        [prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)],
        server_env,
    )

    def report() -> str:
        return "\n".join(child.tail() for child in processes.children)

    await _wait_for_health(api_url, server, report)
    client_env = {k: v for k, v in server_env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
    client_env["PREFECT_API_URL"] = api_url
    return PostgresStack(
        folder=folder,
        database_url=f"postgresql://{ROLE}@127.0.0.1:{port}/{DATABASE}",
        api_url=api_url,
        env=client_env,
        processes=processes,
        postgres=postgres,
        server=server,
    )


def stop_postgres_stack(processes: Processes, folder: Path) -> None:
    """Stop every process (server first, then PostgreSQL) and remove the cluster's folder."""
    try:
        processes.stop_all()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
