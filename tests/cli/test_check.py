"""`LumaRelayCredentials.check()` and `luma-prefect check`: one free read tells a wrong key
from a wrong URL from a wrong style, against real HTTP on loopback."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from luma_prefect import LumaRelayCredentials
from luma_prefect.cli import app
from luma_prefect.simulator import RelaySimulator

from .conftest import closed_port, one_line_error

STYLES = ("generations", "task", "official")


def credentials(base_url: str, key: str, style: str) -> LumaRelayCredentials:
    return LumaRelayCredentials(
        base_url=base_url,
        api_key=SecretStr(key),
        api_style=style,  # type: ignore[arg-type]
    )


def reads(sim: RelaySimulator) -> int:
    return sum(sim.counters().requests.values())


@pytest.fixture
def serve_everywhere() -> Iterator[Callable[[int, str, str], str]]:
    """A loopback HTTP server that answers every GET with one status, type and body."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, content_type: str, body: str) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("style", STYLES)
def test_right_settings_pass_with_one_read(luma_simulator_factory, style: str) -> None:
    sim = luma_simulator_factory(style=style)

    result = credentials(sim.base_url, sim.api_key, style).check()

    assert result.ok and result.problem is None
    assert result.message.startswith(f"OK: {sim.base_url} answers the {style} style")
    assert reads(sim) == 1
    assert sim.counters().submits_accepted == 0


@pytest.mark.parametrize("style", STYLES)
def test_a_wrong_key_is_named_and_not_shown(luma_simulator_factory, style: str) -> None:
    sim = luma_simulator_factory(style=style)

    result = credentials(sim.base_url, "sk-wrong-key-123", style).check()

    assert (result.ok, result.problem) == (False, "key")
    assert result.message.startswith("Wrong key:") and "HTTP 401" in result.message
    assert "sk-wrong-key-123" not in result.message
    assert reads(sim) == 1


@pytest.mark.parametrize(
    ("relay_style", "configured"),
    [(r, c) for r in STYLES for c in STYLES if r != c],
)
def test_a_wrong_style_names_the_style_that_answers(
    luma_simulator_factory, relay_style: str, configured: str
) -> None:
    sim = luma_simulator_factory(style=relay_style)

    result = credentials(sim.base_url, sim.api_key, configured).check()

    assert (result.ok, result.problem) == (False, "style")
    assert result.answering_style == relay_style
    assert f"Set api_style to {relay_style}" in result.message
    assert reads(sim) <= 3


def test_a_closed_port_is_a_wrong_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    result = credentials(url, "sk-x", "generations").check()

    assert (result.ok, result.problem, result.proven) == (False, "url", True)
    assert result.message.startswith(f"Wrong URL: cannot reach {url} (ConnectError")


def test_a_web_site_is_a_wrong_url(serve_everywhere) -> None:
    url = serve_everywhere(200, "text/html", "<!doctype html><html><body>Relay shop</body></html>")

    result = credentials(url, "sk-x", "generations").check()

    assert (result.ok, result.problem, result.proven) == (False, "url", False)
    assert "with a web page" in result.message


def test_a_json_server_without_luma_routes_is_a_wrong_url(serve_everywhere) -> None:
    url = serve_everywhere(404, "application/json", json.dumps({"detail": "Not Found"}))

    result = credentials(url, "sk-x", "task").check()

    assert (result.ok, result.problem, result.proven) == (False, "url", False)
    assert "no Luma route in any style" in result.message
    assert "route_prefix" in result.message


def test_a_relay_that_never_answers_ends_at_the_deadline() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"

        result = credentials(url, "sk-x", "generations").check(timeout_seconds=0.3)

    assert (result.ok, result.problem) == (False, "url")
    assert "no answer within 0.3 s" in result.message


def test_relay_trouble_says_nothing_about_the_settings(luma_simulator_factory) -> None:
    sim = luma_simulator_factory()
    sim.add_fault("server_error", status=503, times=1)

    result = credentials(sim.base_url, sim.api_key, "generations").check()

    assert (result.ok, result.problem) == (False, "relay")
    assert "HTTP 503" in result.message


async def test_acheck_in_async_code(luma_simulator) -> None:
    block = credentials(luma_simulator.base_url, luma_simulator.api_key, "generations")

    result = await block.acheck()

    assert result.ok


def test_check_also_works_inside_a_running_event_loop(luma_simulator) -> None:
    """Sync `check()` called from async code (e.g. a notebook) still returns a result."""
    import asyncio

    block = credentials(luma_simulator.base_url, luma_simulator.api_key, "generations")

    async def inside() -> bool:
        return block.check().ok

    assert asyncio.run(inside())


# The command: one line, exit code 0 only when all works.


@pytest.fixture
def relay_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def set_env(base_url: str, key: str, style: str = "generations") -> None:
        monkeypatch.setenv("LUMA_RELAY_BASE_URL", base_url)
        monkeypatch.setenv("LUMA_RELAY_API_KEY", key)
        monkeypatch.setenv("LUMA_RELAY_API_STYLE", style)

    return set_env


def test_command_prints_one_line_when_all_works(luma_simulator, relay_env) -> None:
    relay_env(luma_simulator.base_url, luma_simulator.api_key)

    result = CliRunner().invoke(app, ["check"])

    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("OK: ")
    assert result.stderr == ""


def test_command_wrong_key(luma_simulator, relay_env) -> None:
    relay_env(luma_simulator.base_url, "sk-not-this-one")

    result = CliRunner().invoke(app, ["check"])

    assert result.exit_code == 1
    assert one_line_error(result).startswith("error: Wrong key:")
    assert "sk-not-this-one" not in result.output


def test_command_wrong_style(luma_simulator_factory, relay_env) -> None:
    sim = luma_simulator_factory(style="task")
    relay_env(sim.base_url, sim.api_key, "generations")

    result = CliRunner().invoke(app, ["check"])

    assert result.exit_code == 1
    assert "Set api_style to task" in one_line_error(result)


def test_command_wrong_url(relay_env) -> None:
    relay_env(f"http://127.0.0.1:{closed_port()}", "sk-x")

    result = CliRunner().invoke(app, ["check"])

    assert result.exit_code == 1
    assert one_line_error(result).startswith("error: Wrong URL: cannot reach")


@pytest.mark.usefixtures("prefect_harness")
def test_command_checks_a_saved_block_by_name(luma_simulator, monkeypatch) -> None:
    monkeypatch.delenv("LUMA_RELAY_BASE_URL", raising=False)
    luma_simulator.credentials().save("check-by-name", overwrite=True)

    result = CliRunner().invoke(app, ["check", "check-by-name"])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"OK: {luma_simulator.base_url}")


@pytest.mark.usefixtures("prefect_harness")
def test_command_names_a_missing_block(monkeypatch) -> None:
    monkeypatch.delenv("LUMA_RELAY_BASE_URL", raising=False)

    result = CliRunner().invoke(app, ["check", "no-such-block"])

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "no LumaRelayCredentials block named 'no-such-block'" in line
    assert "luma-prefect save-credentials no-such-block" in line
