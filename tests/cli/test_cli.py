"""The main-job commands, run in-process against the simulator and the embedded API."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luma_prefect import LumaRelayCredentials
from luma_prefect.cli import app
from luma_prefect.simulator import RelaySimulator

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def sim(luma_simulator: RelaySimulator) -> RelaySimulator:
    return luma_simulator


@pytest.fixture
def relay_env(sim: RelaySimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMA_RELAY_BASE_URL", sim.base_url)
    monkeypatch.setenv("LUMA_RELAY_API_KEY", sim.api_key)
    monkeypatch.setenv("LUMA_RELAY_API_STYLE", sim.style)
    monkeypatch.setenv("LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS", "1")  # media on 127.0.0.1


def test_generate_uses_the_environment_and_prints_the_files(
    sim: RelaySimulator, relay_env: None, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "a heron in the reeds",
            "--destination",
            str(tmp_path),
            "--poll-interval",
            "0.05",
        ],
    )

    assert result.exit_code == 0, result.output
    manifests = list(tmp_path.glob("*/manifest.json"))
    assert len(manifests) == 1
    assert str(manifests[0]) in result.output
    assert json.loads(manifests[0].read_text())["prompt"] == "a heron in the reeds"
    assert sim.api_key not in result.output
    assert sim.counters().submits_accepted == 1


def test_collect_publishes_existing_ids(
    sim: RelaySimulator, relay_env: None, tmp_path: Path
) -> None:
    generation_id = sim.create_generation(prompt="made elsewhere", state="completed")

    result = CliRunner().invoke(
        app, ["collect", generation_id, "--destination", str(tmp_path), "--poll-interval", "0.05"]
    )

    assert result.exit_code == 0, result.output
    assert (tmp_path / generation_id / "video.mp4").exists()
    assert sim.counters().submits_accepted == 0


def test_collect_exits_non_zero_when_nothing_was_published(
    sim: RelaySimulator, relay_env: None, tmp_path: Path
) -> None:
    generation_id = sim.create_generation(
        prompt="made elsewhere", state="failed", failure_reason="content moderation"
    )

    result = CliRunner().invoke(app, ["collect", generation_id, "--destination", str(tmp_path)])

    assert result.exit_code == 1
    assert f"Generation {generation_id}: failed" in result.output
    assert "content moderation" in result.output
    assert not (tmp_path / generation_id / "video.mp4").exists()


def _block_name() -> str:
    """A block name of the test's own: another test (or run) on the same Prefect API saving
    the same name for its own simulator could overwrite it meanwhile."""
    return f"cli-test-relay-{uuid.uuid4().hex[:8]}"


def test_save_credentials_saves_a_loadable_block(sim: RelaySimulator, relay_env: None) -> None:
    name = _block_name()
    result = CliRunner().invoke(app, ["save-credentials", name])

    assert result.exit_code == 0, result.output
    block = LumaRelayCredentials.load(name)
    assert isinstance(block, LumaRelayCredentials)
    assert block.base_url == sim.base_url
    assert block.api_key.get_secret_value() == sim.api_key
    assert sim.api_key not in result.output


def test_save_credentials_says_what_the_check_found(sim: RelaySimulator, relay_env: None) -> None:
    result = CliRunner().invoke(app, ["save-credentials", _block_name()])

    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    assert "; check: OK" in result.stdout
    assert sum(sim.counters().requests.values()) == 1


def test_save_credentials_can_skip_the_check(sim: RelaySimulator, relay_env: None) -> None:
    result = CliRunner().invoke(app, ["save-credentials", _block_name(), "--no-check"])

    assert result.exit_code == 0, result.output
    assert sim.counters().requests == {}
