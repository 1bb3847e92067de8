"""A private, temporary Prefect home for the CLI's local runs (`demo`, `generate`, `collect`).

Why: with no server to talk to, Prefect runs a temporary one on the database in its home,
`~/.prefect/prefect.db`, and migrates it first. A database left there by another Prefect
version (a newer 3.9.1 one, seen with 3.8.8) stops every run at start with alembic's
"Can't locate revision", and an older one gets migrated under its owner's feet. A local run
needs none of that state, so it gets a home and database of its own, deleted at exit, and
the user's `~/.prefect` is never migrated or written. A user who points Prefect at a server
(`PREFECT_API_URL`, in the environment or the active profile) keeps it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["use_private_prefect_home"]


def use_private_prefect_home() -> Path | None:
    """Point Prefect at a new temporary home and SQLite database, unless a server is set.

    Returns the temporary home, or None when `PREFECT_API_URL` names a server. Call it
    before the first flow run of the process.
    """
    if os.environ.get("PREFECT_API_URL") or _profile_api_url():
        return None
    home = Path(tempfile.mkdtemp(prefix="luma-prefect-home-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(home)
    # The name Prefect 3 reads first (the PREFECT_API_... spelling is its older alias).
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
        f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    )
    # A new database is migrated from scratch at each start: Prefect's 20 s default wait for
    # its temporary server ran out on a busy 2-core machine (load 7) before that was done.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if "prefect.context" in sys.modules:
        # Prefect read its settings when it was imported (luma_prefect imports it):
        # have it read them again, the way it does after its own start-up plugins.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return home


def _profile_api_url() -> str | None:
    """The server named by the active profile (`prefect config set PREFECT_API_URL=...`)."""
    if "prefect.context" not in sys.modules:
        return None  # not imported yet: nothing read, and nothing to read it for us
    from prefect.settings import get_current_settings

    return get_current_settings().api.url
