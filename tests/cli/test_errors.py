"""Every CLI error path ends with one line (what happened, to which generation, what to do),
a non-zero exit code, and never a traceback.

The paths where a traceback used to reach the terminal run the real console script in a
subprocess; the others run in-process, where an exception escaping the command would show
up as `result.exception`.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from luma_prefect import LumaRelayCredentials
from luma_prefect.cli import app
from luma_prefect.simulator import RelaySimulator

from .conftest import Run, closed_port, one_line_error

GENERATION_ID = "4665a07c-7641-4809-a133-10786201bb56"


@pytest.fixture(autouse=True)
def no_relay_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BASE_URL", "API_KEY", "API_STYLE", "ROUTE_PREFIX"):
        monkeypatch.delenv(f"LUMA_RELAY_{name}", raising=False)


def relay_env(sim: RelaySimulator, key: str | None = None) -> dict[str, str]:
    return {"LUMA_RELAY_BASE_URL": sim.base_url, "LUMA_RELAY_API_KEY": key or sim.api_key}


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, args, env=env)
    # Anything but SystemExit here would have been a traceback for a user.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


# In a real process: these printed 47 and 108 lines of traceback before.


def test_save_credentials_with_a_url_without_scheme(run_cli: Run) -> None:
    result = run_cli(
        "save-credentials",
        env={"LUMA_RELAY_BASE_URL": "relay.example", "LUMA_RELAY_API_KEY": "sk-secret-1"},
    )

    assert result.returncode == 1
    line = one_line_error(result)
    assert "LUMA_RELAY_BASE_URL 'relay.example'" in line and "http:// or https://" in line
    assert "sk-secret-1" not in line


def test_save_credentials_with_the_prefect_server_down(
    run_cli: Run, luma_simulator: RelaySimulator
) -> None:
    api = f"http://127.0.0.1:{closed_port()}/api"

    result = run_cli("save-credentials", env={**relay_env(luma_simulator), "PREFECT_API_URL": api})

    assert result.returncode == 1
    line = one_line_error(result)
    assert f"cannot use the Prefect API at {api}" in line
    assert "Nothing was saved" in line and "prefect server start" in line


def test_generate_with_the_prefect_server_down(
    run_cli: Run, luma_simulator: RelaySimulator
) -> None:
    api = f"http://127.0.0.1:{closed_port()}/api"

    result = run_cli("generate", "a fox", env={**relay_env(luma_simulator), "PREFECT_API_URL": api})

    assert result.returncode == 1
    assert "Nothing was submitted" in one_line_error(result)
    assert luma_simulator.counters().submits_accepted == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_generation_that_fails_ends_with_its_id_and_no_traceback(
    run_cli: Run, luma_simulator: RelaySimulator, tmp_path
) -> None:
    """Prefect's own log lines stay (they are the run's progress), without tracebacks."""
    from prefect.settings import PREFECT_API_URL

    luma_simulator.add_fault("fail_generation")
    env = {**relay_env(luma_simulator), "PREFECT_API_URL": str(PREFECT_API_URL.value())}

    result = run_cli(
        "generate", "a fox", "--poll-interval", "0.05", "--destination", str(tmp_path), env=env
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    assert luma_simulator.counters().submits_accepted == 1
    [generation_id] = luma_simulator.generation_ids()
    assert generation_id in errors[0]


# In-process.


@pytest.mark.usefixtures("prefect_harness")
def test_generate_with_a_missing_block(luma_simulator: RelaySimulator) -> None:
    result = invoke(["generate", "a fox", "--credentials", "no-such-relay"])

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "no LumaRelayCredentials block named 'no-such-relay'" in line
    assert "save-credentials no-such-relay" in line
    assert luma_simulator.counters().requests == {}


@pytest.mark.usefixtures("prefect_harness")
def test_collect_with_a_missing_block() -> None:
    result = invoke(["collect", GENERATION_ID, "--credentials", "no-such-relay"])

    assert result.exit_code == 1
    assert "no LumaRelayCredentials block named 'no-such-relay'" in one_line_error(result)


def test_collect_with_bad_ids(luma_simulator: RelaySimulator) -> None:
    result = invoke(["collect", GENERATION_ID, "../etc", "a/b"], env=relay_env(luma_simulator))

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "not a valid generation id: '../etc', 'a/b'" in line
    assert luma_simulator.counters().requests == {}


def test_generate_with_a_bad_aspect_ratio(luma_simulator: RelaySimulator) -> None:
    result = invoke(["generate", "a fox", "--aspect-ratio", "5:4"], env=relay_env(luma_simulator))

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "aspect_ratio" in line and "'16:9'" in line and "Nothing was submitted" in line
    assert luma_simulator.counters().requests == {}


def test_generate_with_a_wrong_key(luma_simulator: RelaySimulator) -> None:
    result = invoke(["generate", "a fox"], env=relay_env(luma_simulator, "sk-wrong-999"))

    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith("error: Wrong key:") and "Nothing was submitted" in line
    assert "sk-wrong-999" not in line
    assert luma_simulator.counters().submits_accepted == 0


def test_generate_with_the_relay_down() -> None:
    env = {"LUMA_RELAY_BASE_URL": f"http://127.0.0.1:{closed_port()}", "LUMA_RELAY_API_KEY": "k"}

    result = invoke(["generate", "a fox"], env=env)

    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith("error: Wrong URL: cannot reach") and "Nothing was submitted" in line


@pytest.mark.usefixtures("prefect_harness")
def test_save_credentials_refuses_a_key_the_relay_refuses(luma_simulator: RelaySimulator) -> None:
    result = invoke(
        ["save-credentials", "refused-key"], env=relay_env(luma_simulator, "sk-wrong-42")
    )

    assert result.exit_code == 1
    line = one_line_error(result)
    assert line.startswith("error: Wrong key:") and "Nothing was saved" in line
    with pytest.raises(ValueError, match="Unable to find block document"):
        LumaRelayCredentials.load("refused-key")


@pytest.mark.usefixtures("prefect_harness")
def test_save_credentials_will_not_overwrite_when_told_not_to(
    luma_simulator: RelaySimulator,
) -> None:
    luma_simulator.credentials().save("taken-name", overwrite=True)

    result = invoke(
        ["save-credentials", "taken-name", "--no-overwrite"], env=relay_env(luma_simulator)
    )

    assert result.exit_code == 1
    assert "a block named 'taken-name' already exists" in one_line_error(result)


def test_save_credentials_names_the_missing_variables() -> None:
    result = invoke(["save-credentials"])

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "LUMA_RELAY_BASE_URL" in line and "LUMA_RELAY_API_KEY" in line


def test_a_missing_argument() -> None:
    result = invoke(["collect"])

    assert result.exit_code == 2
    assert "see 'luma-prefect collect --help'" in one_line_error(result)


def test_an_unknown_command() -> None:
    result = invoke(["colect"])

    assert result.exit_code == 2
    assert "No such command 'colect'" in one_line_error(result)


def test_simulate_with_an_unknown_style() -> None:
    result = invoke(["simulate", "--style", "rest"])

    assert result.exit_code == 2
    assert "unknown style 'rest': use one of generations, task, official" in one_line_error(result)


def test_an_unexpected_error_is_one_line_that_says_how_to_see_more(
    luma_simulator: RelaySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: LumaRelayCredentials, timeout_seconds: float = 15.0) -> None:
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(LumaRelayCredentials, "check", broken)

    result = invoke(["check"], env=relay_env(luma_simulator))

    assert result.exit_code == 1
    line = one_line_error(result)
    assert "RuntimeError: something nobody planned for" in line
    assert "LUMA_PREFECT_DEBUG=1" in line

    debug = CliRunner().invoke(
        app, ["check"], env={**relay_env(luma_simulator), "LUMA_PREFECT_DEBUG": "1"}
    )
    assert isinstance(debug.exception, RuntimeError)


def test_console_logs_lose_tracebacks_while_other_handlers_keep_them() -> None:
    """In a flow run started by the CLI, the terminal gets the log line without its
    traceback; the handler that sends logs to the Prefect API still gets the exception."""
    import io
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from luma_prefect.cli import _console_logs_without_tracebacks

    terminal = io.StringIO()
    console = PrefectConsoleHandler(stream=terminal)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    kept: list[logging.LogRecord] = []
    api = logging.Handler()
    api.emit = kept.append  # type: ignore[method-assign]
    logger = logging.getLogger("luma_prefect.test_cli_console")
    root = logging.getLogger()
    root.addHandler(console)
    root.addHandler(api)  # after the console one: it must still find the traceback
    try:
        with _console_logs_without_tracebacks():
            try:
                raise ValueError("the run broke")
            except ValueError:
                logger.exception("Encountered exception during execution")
        with_tracebacks_again = console.formatter
    finally:
        root.removeHandler(console)
        root.removeHandler(api)

    assert "ERROR Encountered exception during execution" in terminal.getvalue()
    assert "Traceback" not in terminal.getvalue()
    assert kept[0].exc_info is not None and kept[0].exc_info[0] is ValueError
    assert type(with_tracebacks_again) is logging.Formatter  # the original is back
