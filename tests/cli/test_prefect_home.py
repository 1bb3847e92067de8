"""A server set only in the active Prefect profile (`prefect config set PREFECT_API_URL=...`)
is honoured: the command line reads the profile without importing Prefect, writes nothing
to `~/.prefect`, and uses that server instead of a private temporary home."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from luma_prefect._prefect_home import _profile_api_url
from luma_prefect.simulator import RelaySimulator

from .conftest import ENTRY_POINT, closed_port, one_line_error

SERVER = "http://127.0.0.1:4200/api"
PROFILES = f"""
active = "remote"

[profiles.ephemeral]
PREFECT_SERVER_EPHEMERAL_ENABLED = "true"

[profiles.remote]
PREFECT_API_URL = "{SERVER}"
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's home with no Prefect variable set: only the profiles file can name a server."""
    for name in ("PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".prefect").mkdir()
    return tmp_path


def test_the_active_profile_s_server_is_read_from_the_user_s_profiles(home: Path) -> None:
    (home / ".prefect" / "profiles.toml").write_text(PROFILES)
    assert _profile_api_url() == SERVER


def test_prefect_profile_overrides_the_file_s_active_profile(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / ".prefect" / "profiles.toml").write_text(PROFILES)
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert _profile_api_url() is None
    monkeypatch.setenv("PREFECT_PROFILE", "remote")
    assert _profile_api_url() == SERVER


@pytest.mark.parametrize("variable", ["PREFECT_PROFILES_PATH", "PREFECT_HOME"])
def test_the_profiles_file_is_where_prefect_looks_for_it(
    variable: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "profiles.toml").write_text(PROFILES)
    monkeypatch.setenv(
        variable, str(elsewhere / "profiles.toml" if variable.endswith("PATH") else elsewhere)
    )
    assert _profile_api_url() == SERVER
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    assert _profile_api_url() is None


@pytest.mark.parametrize(
    "text",
    [
        None,  # no profiles file: Prefect's default `ephemeral` profile
        'active = "local"\n[profiles.remote]\nPREFECT_API_URL = "http://x/api"\n',
        '[profiles.remote]\nPREFECT_API_URL = "http://x/api"\n',  # no active profile
        'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = ""\n',
        'active = "remote"\n[profiles.remote\n',  # not TOML: Prefect warns and ignores it
    ],
)
def test_no_server_unless_the_active_profile_names_one(home: Path, text: str | None) -> None:
    if text is not None:
        (home / ".prefect" / "profiles.toml").write_text(text)
    assert _profile_api_url() is None


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generate_uses_the_server_of_the_active_profile_and_writes_nothing_there(
    tmp_path: Path, luma_simulator: RelaySimulator
) -> None:
    """The profile names a server that is down: the command says so and pays nothing.

    With the profile ignored, it would have run on a private temporary home and submitted.
    """
    api = f"http://127.0.0.1:{closed_port()}/api"
    prefect_dir = tmp_path / ".prefect"
    prefect_dir.mkdir()
    (prefect_dir / "profiles.toml").write_text(PROFILES.replace(SERVER, api))
    before = _files(prefect_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LUMA_"))}
    env.update(
        HOME=str(tmp_path),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        COLUMNS="200",
        LUMA_RELAY_BASE_URL=luma_simulator.base_url,
        LUMA_RELAY_API_KEY=luma_simulator.api_key,
        LUMA_RELAY_API_STYLE=luma_simulator.style,
        LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS="1",
    )

    result = subprocess.run(
        [str(ENTRY_POINT), "generate", "a fox", "--destination", str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 1
    line = one_line_error(result)
    assert f"cannot use the Prefect API at {api}" in line and "Nothing was submitted" in line
    assert luma_simulator.counters().submits_accepted == 0
    assert _files(prefect_dir) == before
