"""`luma-prefect demo` is a guest: another Prefect's `~/.prefect` database stays untouched."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

# A revision no Prefect here knows, as a newer Prefect leaves (3.9.1's 27d8f4e1a6c9 for 3.8.8):
# a Prefect that opened this file would stop at start with alembic's "Can't locate revision".
FOREIGN_REVISION = "deadbeef0001"


def _files(root: Path) -> dict[str, str]:
    """Every file under `root` and its sha256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_runs_beside_a_foreign_prefect_database_and_leaves_it_untouched(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    prefect_dir = home / ".prefect"
    prefect_dir.mkdir(parents=True)
    connection = sqlite3.connect(prefect_dir / "prefect.db")
    with connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (FOREIGN_REVISION,))
    connection.close()
    before = _files(prefect_dir)
    # The user's environment, with no Prefect settings of the test session: only HOME says
    # where Prefect would look.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    out = tmp_path / "out"

    result = subprocess.run(
        [str(Path(sys.executable).with_name("luma-prefect")), "demo", "--destination", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Done: files and manifests are under" in result.stdout
    assert len(list(out.glob("*/manifest.json"))) == 4  # generate-video and a batch of 3
    assert _files(prefect_dir) == before
    assert sorted(p.name for p in prefect_dir.iterdir()) == ["prefect.db"]
