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
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib

    _TOMLError: type[Exception] = tomllib.TOMLDecodeError

    def _read_toml(text: str) -> dict[str, Any]:
        return tomllib.loads(text)

else:  # Python 3.10: `toml`, which Prefect depends on there for the same file
    import toml

    _TOMLError = toml.TomlDecodeError

    def _read_toml(text: str) -> dict[str, Any]:
        return toml.loads(text)


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
    """The server named by the active profile (`prefect config set PREFECT_API_URL=...`).

    Read the way Prefect reads it, without importing Prefect (the command line imports it
    only after this decision) and without writing anything: the profiles file is
    `PREFECT_PROFILES_PATH`, else `profiles.toml` in `PREFECT_HOME` or `~/.prefect`; the
    active profile is `PREFECT_PROFILE`, else the file's `active` key. A missing, unreadable
    or invalid file, or an active profile it does not hold, names no server (Prefect then
    uses its default `ephemeral` profile, which names none either).
    """
    if os.environ.get("PREFECT_PROFILES_PATH"):
        path = Path(os.environ["PREFECT_PROFILES_PATH"])
    else:
        home = os.environ.get("PREFECT_HOME")
        path = (Path(home) if home else Path.home() / ".prefect") / "profiles.toml"
    try:
        contents = _read_toml(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, _TOMLError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or contents.get("active")
    profiles = contents.get("profiles")
    if not isinstance(active, str) or not isinstance(profiles, dict):
        return None
    profile = profiles.get(active)
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None
