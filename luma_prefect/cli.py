"""The `luma-prefect` command line.

Kept cheap to import: this module imports no Prefect, flows or client; every command
imports what it needs inside itself, so `--help` and `simulate` start fast.

Every command ends with one line on an error (what happened, to which generation, what to
do), never a traceback: set LUMA_PREFECT_DEBUG=1 to see one.

Commands: `simulate` (an offline relay), `generate` and `collect` (the main job on a real
relay), `resolve` (paid submits in doubt), `save-credentials` (a block from the
environment), `check` (prove a relay's settings with one free read), `demo` (the main
job on the simulator and Prefect's embedded API), `serve` and `install-automations`
(running at scale, in `luma_prefect.fleet`).

Example:
    ```console
    $ luma-prefect simulate --style task --pending-seconds 0.5
    $ luma-prefect check luma-relay
    $ luma-prefect demo
    ```
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from typer.core import TyperGroup

from luma_prefect.fleet._commands import register as _register_fleet_commands

if TYPE_CHECKING:
    from luma_prefect.credentials import LumaRelayCredentials
    from luma_prefect.simulator import RelaySimulator

__all__ = ["app", "main"]

DEBUG_VARIABLE = "LUMA_PREFECT_DEBUG"


class _OneLineErrors(TyperGroup):
    """Every failure of every command as one line on stderr and a non-zero exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:
            # Typer's own click: usage errors carry the context of the command they are about.
            if type(exc).__name__ == "NoArgsIsHelpError":
                # Not an error: the help, which typer's rich help printed already.
                if exc.format_message():
                    typer.echo(exc.format_message(), err=True)
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f": see '{ctx.command_path} --help'" if ctx is not None else ""
                _echo_error(exc.format_message().rstrip(".") + hint + ".")
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            _echo_error("interrupted.")
            code = 130
        except Exception as exc:
            if os.environ.get(DEBUG_VARIABLE):
                raise
            _echo_error(_describe(exc))
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="luma-prefect",
    help="Luma Dream Machine video generation through API relays, with Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's help rendering costs about 0.15 s of CPU per `--help`
    # (measured: `simulate --help` 0.35-0.42 s CPU with it, 0.21-0.22 s without).
    rich_markup_mode=None,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Luma Dream Machine video generation through API relays, with Prefect."""
    if ctx.invoked_subcommand in ("demo", "generate", "collect"):
        from luma_prefect._prefect_home import use_private_prefect_home

        use_private_prefect_home()  # no server set: never the user's ~/.prefect database


@app.command()
def simulate(
    port: int = typer.Option(0, help="Port on 127.0.0.1; 0 picks a free one."),
    key: str | None = typer.Option(
        None, help="API key the simulator accepts; a random sk-sim-... key when not given."
    ),
    style: str = typer.Option("generations", help="API style: generations, task or official."),
    prefix: str = typer.Option("/luma", help="Route prefix (generations and task styles)."),
    pending_seconds: float = typer.Option(1.0, help="Seconds a generation stays pending."),
    processing_seconds: float = typer.Option(3.0, help="Then seconds it stays processing."),
    failure_ratio: float = typer.Option(0.0, help="Share of generations that end failed."),
    seed: int = typer.Option(0, help="Seed of failures and timing jitter."),
) -> None:
    """Run an offline Luma relay on 127.0.0.1 until Ctrl-C, and print how to call it.

    Example:
        ```console
        $ luma-prefect simulate --port 8765 --key sk-test
        ```
    """
    import signal
    import threading

    from luma_prefect.simulator import RelaySimulator, SimulatorConfig

    try:
        config = SimulatorConfig(
            style=style,  # type: ignore[arg-type]
            route_prefix=prefix,
            api_key=key,
            pending_seconds=pending_seconds,
            processing_seconds=processing_seconds,
            failure_ratio=failure_ratio,
            seed=seed,
            port=port,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    simulator = RelaySimulator(config)
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    # Ctrl-C and SIGTERM (kill, process managers) both stop cleanly. SIGINT is handled
    # explicitly: a process started in the background inherits it ignored.
    handled = (signal.SIGINT, signal.SIGTERM) if in_main else ()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        simulator.start()
        typer.echo(_usage(simulator))
        # A timed wait keeps the main thread responsive to Ctrl-C.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        typer.echo(f"Cannot listen on 127.0.0.1:{port}: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        simulator.stop()
    typer.echo("Simulator stopped.")


def _usage(sim: RelaySimulator) -> str:
    base, auth = sim.base_url, shlex.quote(f"Authorization: Bearer {sim.api_key}")
    json_header = shlex.quote("Content-Type: application/json")
    if sim.style == "official":
        root = f"{base}/dream-machine/v1/generations"
        submit = {"prompt": "a red fox in the snow", "aspect_ratio": "16:9"}
        poll = f"{root}/<id>"
        link = "assets.video"
    else:
        root = f"{base}{sim.route_prefix}/generations"
        submit = {"user_prompt": "a red fox in the snow", "aspect_ratio": "16:9"}
        poll = (
            f"{root}/<id>"
            if sim.style == "generations"
            else f"{base}{sim.route_prefix}/task?id=<id>"
        )
        link = "video.download_url" if sim.style == "generations" else "data.video.url"
    body = shlex.quote(json.dumps(submit))
    lines = [
        f"Luma relay simulator ({sim.style} style) on {base}  -  Ctrl-C to stop",
        "",
        f"export LUMA_RELAY_BASE_URL={base}",
        f"export LUMA_RELAY_API_KEY={sim.api_key}",
        f"export LUMA_RELAY_API_STYLE={sim.style}",
        f"export LUMA_RELAY_ROUTE_PREFIX={sim.route_prefix}",
        "export LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS=1  # its media links are on 127.0.0.1",
        "",
        "# submit (answers the new generation and its id):",
        f"curl -s -X POST {shlex.quote(root)} -H {auth} -H {json_header} -d {body}",
        "# poll until the state is completed:",
        f"curl -s {shlex.quote(poll)} -H {auth}",
    ]
    if sim.style == "generations":
        batch = shlex.quote(json.dumps({"ids": ["<id>"]}))
        lines += [
            "# poll many at once:",
            f"curl -s -X POST {shlex.quote(base + sim.route_prefix + '/tasks')} -H {auth} "
            f"-H {json_header} -d {batch}",
        ]
    lines += [
        f"# download: the {link} link of the completed answer (no key needed):",
        f"curl -s -o video.mp4 '<{link}>'",
        "",
        f"Admin (no key): curl -s {base}/_simulator/counters",
    ]
    return "\n".join(lines)


def _relay_for_flow(name: str | None, consequence: str) -> LumaRelayCredentials | str:
    """The credentials a flow gets, after one free read proved they work.

    A block name is loaded here, so that a missing block, a Prefect API that is down, or a
    relay that refuses the key end in one line before any flow run starts; the flow gets
    the name (shown in the UI). Only proven problems stop here (see `CredentialsCheck`).
    """
    block = _resolve(name)
    if _uses_environment(name):
        _check_prefect_api(consequence)  # a saved block was just read from it
    result = block.check()
    if not result.ok and result.proven and result.problem != "relay":
        _fail(f"{result.message} {consequence}")
    return block if _uses_environment(name) else (name or "luma-relay")


def _resolve(name: str | None) -> LumaRelayCredentials:
    """The block `name` names; else the environment's relay; else the luma-relay block."""
    return _from_env() if _uses_environment(name) else _load_block(name or "luma-relay")


def _uses_environment(name: str | None) -> bool:
    return not name and bool(os.environ.get("LUMA_RELAY_BASE_URL"))


def _from_env() -> LumaRelayCredentials:
    from pydantic import ValidationError

    from luma_prefect._urls import public_url
    from luma_prefect.credentials import (
        ENV_API_STYLE,
        ENV_BASE_URL,
        ENV_ROUTE_PREFIX,
        LumaRelayCredentials,
    )

    try:
        return LumaRelayCredentials.from_env()
    except ValidationError as exc:
        variables = {
            "base_url": ENV_BASE_URL,
            "api_style": ENV_API_STYLE,
            "route_prefix": ENV_ROUTE_PREFIX,
        }
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            said = str(error["msg"]).removeprefix("Value error, ")
            if field == "base_url":
                shown = public_url(os.environ.get(ENV_BASE_URL, "")) or "(empty)"
                said = f"{shown!r}: {said} (e.g. https://relay.example)"
            problems.append(f"{variables.get(field, field)} {said}")
        _fail("; ".join(problems) + ". Fix the variable, then run this again.")


def _load_block(name: str) -> LumaRelayCredentials:
    from luma_prefect.credentials import LumaRelayCredentials

    try:
        block = LumaRelayCredentials.load(name)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        _fail(
            f"no LumaRelayCredentials block named {name!r} on {_prefect_api()}: save one "
            f"with `luma-prefect save-credentials {name}` (from LUMA_RELAY_BASE_URL and "
            "LUMA_RELAY_API_KEY), or set those variables, or pass --credentials NAME."
        )
    except Exception as exc:
        _fail_on_prefect_api(exc, "Nothing was sent to the relay.")
    assert isinstance(block, LumaRelayCredentials)  # `load` is typed sync-or-async
    return block


def _prefect_api() -> str:
    """Where the Prefect API is, as the user would recognise it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return f"the Prefect API at {url}" if url else "Prefect's temporary local API"


def _fail_on_prefect_api(exc: BaseException, consequence: str) -> NoReturn:
    """One line for a Prefect API that is down or refuses; anything else goes up."""
    said = _prefect_api_trouble(exc)
    if said is None:
        raise exc
    _fail(
        f"cannot use {_prefect_api()} ({said}). {consequence} Start the server "
        "(`prefect server start`) or fix PREFECT_API_URL, then run this again."
    )


def _prefect_api_trouble(exc: BaseException | None) -> str | None:
    """What went wrong talking to the Prefect API, if that is what `exc` (or its cause) is."""
    import httpx

    for _ in range(5):
        if exc is None:
            return None
        if isinstance(exc, httpx.HTTPStatusError):
            return f"HTTP {exc.response.status_code}"
        if isinstance(exc, httpx.TransportError):
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        # Prefect's own health checks say so in a RuntimeError, with no cause attached.
        if isinstance(exc, RuntimeError) and "Failed to reach API" in str(exc):
            return "no answer"
        exc = exc.__cause__ or exc.__context__
    return None


def _check_prefect_api(consequence: str) -> None:
    """Fail in one line now if the configured Prefect API does not answer.

    Without PREFECT_API_URL a flow starts Prefect's temporary local API itself: nothing to
    check then.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return

    error: BaseException | None
    try:
        with get_client(sync_client=True) as client:
            error = client.api_healthcheck()
    except Exception as exc:
        error = exc
    if error is not None:
        _fail_on_prefect_api(error, consequence)


def _echo_error(message: str) -> None:
    # One line whatever the message holds; a key echoed back by anything is blanked.
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    key = os.environ.get("LUMA_RELAY_API_KEY")
    if key:
        line = line.replace(key, "**********")
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)


def _fail(message: str) -> NoReturn:
    _echo_error(message)
    raise typer.Exit(code=1)


def _describe(exc: BaseException) -> str:
    """One line for an error no command expected: what it is, and how to see more."""
    from luma_prefect._exceptions import LumaError

    if isinstance(exc, LumaError):
        return str(exc)
    said = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{said} (unexpected: set {DEBUG_VARIABLE}=1 to see where it came from)."


def _check_ids(generation_ids: list[str]) -> None:
    from luma_prefect._ids import check_generation_id

    bad = []
    for generation_id in generation_ids:
        try:
            check_generation_id(generation_id)
        except ValueError:
            bad.append(generation_id[:80])
    if bad:
        shown = ", ".join(repr(i) for i in bad[:3]) + (
            f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        _fail(
            f"not a valid generation id: {shown}. Pass the ids the relay gave at submit "
            "(a uuid such as 4665a07c-7641-4809-a133-10786201bb56); nothing was fetched."
        )


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows."),
    aspect_ratio: str = typer.Option("16:9", help="16:9, 9:16, 1:1, 4:3, 3:4, 21:9 or 9:21."),
    image_url: str | None = typer.Option(None, help="Start frame: http(s) URL or data URI."),
    credentials: str | None = typer.Option(
        None, help="Saved LumaRelayCredentials block (default: LUMA_RELAY_* or luma-relay)."
    ),
    destination: str = typer.Option("luma-output", help="Folder or fsspec URL for the files."),
    timeout: float = typer.Option(1800.0, help="Longest wait, in seconds."),
    poll_interval: float = typer.Option(5.0, help="First interval between polls, in seconds."),
) -> None:
    """Generate one video, download its files and publish them (the generate-video flow).

    Example:
        ```console
        $ luma-prefect generate "a red fox in the snow" --destination ./luma-output
        ```
    """
    import asyncio

    from luma_prefect._models import GenerationRequest

    try:  # bad input ends here, in one line, before any flow run
        request = GenerationRequest(
            prompt=prompt,
            aspect_ratio=aspect_ratio,  # type: ignore[arg-type]
            image_url=image_url,
        )
    except ValueError as exc:
        _fail(f"{_first_error(exc)} Nothing was submitted.")
    block = _relay_for_flow(credentials, "Nothing was submitted.")

    from luma_prefect.flows import generate_video

    try:
        with _console_logs_without_tracebacks():
            published = asyncio.run(
                generate_video(
                    prompt=prompt,
                    aspect_ratio=request.aspect_ratio,
                    image_url=image_url,
                    credentials=block,
                    destination=destination,
                    timeout_seconds=timeout,
                    poll_interval_seconds=poll_interval,
                )
            )
    except Exception as exc:
        _fail_in_flow(exc, destination)
    _print_published([published])


@app.command()
def collect(
    generation_ids: list[str] = typer.Argument(..., help="Ids of submitted generations."),
    credentials: str | None = typer.Option(
        None, help="Saved LumaRelayCredentials block (default: LUMA_RELAY_* or luma-relay)."
    ),
    destination: str = typer.Option("luma-output", help="Folder or fsspec URL for the files."),
    timeout: float = typer.Option(1800.0, help="Longest wait for the batch, in seconds."),
    poll_interval: float = typer.Option(5.0, help="First interval between polls, in seconds."),
) -> None:
    """Wait for existing generations, then download and publish each (collect-generations).

    Example:
        ```console
        $ luma-prefect collect 4665a07c-7641-4809-a133-10786201bb56
        ```
    """
    import asyncio

    _check_ids(generation_ids)
    block = _relay_for_flow(credentials, "Nothing was fetched.")

    from luma_prefect.flows import collect_generations

    try:
        with _console_logs_without_tracebacks():
            outcomes = asyncio.run(
                collect_generations(
                    generation_ids=generation_ids,
                    credentials=block,
                    destination=destination,
                    timeout_seconds=timeout,
                    poll_interval_seconds=poll_interval,
                    fail_when="never",
                )
            )
    except Exception as exc:
        _fail_in_flow(exc, destination)
    _print_outcomes(outcomes)
    if not any(o.ok for o in outcomes):
        raise typer.Exit(code=1)


@contextlib.contextmanager
def _console_logs_without_tracebacks() -> Iterator[None]:
    """Prefect's console log lines without their tracebacks, while a flow runs.

    The command ends with one line saying what failed; the flow run's logs in the Prefect
    UI keep every traceback (LUMA_PREFECT_DEBUG=1 keeps them here too).
    """
    if os.environ.get(DEBUG_VARIABLE):
        yield
        return
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [
        handler
        for name in (None, "uvicorn", "fastapi")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]
    saved = [(handler, handler.formatter) for handler in handlers]
    for handler, formatter in saved:
        handler.setFormatter(_WithoutTraceback(formatter))
    try:
        yield
    finally:
        for handler, formatter in saved:
            handler.setFormatter(formatter)


class _WithoutTraceback(logging.Formatter):
    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # The record goes on to other handlers (the API one keeps the traceback): restore it.
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self._inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _first_error(exc: ValueError) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        said = str(error["msg"]).removeprefix("Value error, ")
        return f"{field}: {said}." if field else f"{said}."
    return str(exc)


def _fail_in_flow(exc: Exception, destination: str) -> NoReturn:
    """One line for a flow that ended in an error; the flow run in the UI has the details."""
    from luma_prefect._exceptions import LumaError

    if isinstance(exc, LumaError):
        _fail(str(exc))
    _fail_on_prefect_api(
        exc,
        "Any generation already submitted is in the ledger of "
        f"{destination}: the collect-pending flow finishes it without paying again.",
    )


@app.command("save-credentials")
def save_credentials(
    name: str = typer.Argument("luma-relay", help="Name of the block to save."),
    overwrite: bool = typer.Option(True, help="Replace a block of that name."),
    check: bool = typer.Option(True, help="Check the settings with one free read first."),
) -> None:
    """Save a LumaRelayCredentials block from LUMA_RELAY_BASE_URL / _API_KEY / _API_STYLE.

    Example:
        ```console
        $ LUMA_RELAY_BASE_URL=https://relay.example LUMA_RELAY_API_KEY=sk-... \\
            luma-prefect save-credentials luma-relay
        ```
    """
    from luma_prefect._exceptions import LumaError

    try:
        block = _from_env()
    except LumaError as exc:
        _fail(str(exc))
    said = ""
    if check:
        result = block.check()
        if not result.ok and result.problem != "relay":
            _fail(f"{result.message} Nothing was saved (--no-check saves anyway).")
        said = "; check: " + ("OK" if result.ok else result.message)
    try:
        block.save(name, overwrite=overwrite)
    except ValueError as exc:
        if "already in use" not in str(exc):
            raise
        _fail(
            f"a block named {name!r} already exists: choose another name, or drop --no-overwrite."
        )
    except Exception as exc:
        _fail_on_prefect_api(exc, "Nothing was saved.")
    typer.echo(
        f"Saved LumaRelayCredentials block {name!r} for {block.base_url} "
        f"({block.api_style} style){said}."
    )


@app.command()
def resolve(
    key: str | None = typer.Argument(
        None, help="Key (or its first 6+ characters) of a submit in doubt; none: list them."
    ),
    destination: str = typer.Option("luma-output", help="Folder or fsspec URL of the ledger."),
    generation_id: str | None = typer.Option(
        None, "--generation-id", help="The generation the relay created for this submit."
    ),
    abandon: bool = typer.Option(
        False, "--abandon", help="The relay created nothing: stop reporting this submit."
    ),
) -> None:
    """List paid submits in doubt, or resolve one: attach its generation id, or abandon it.

    A submit is in doubt when it may have reached the relay but no generation id was
    recorded. Nothing here sends anything to the relay: attaching an id lets
    collect-pending finish that generation; abandoning lets a later run submit it anew.

    Example:
        ```console
        $ luma-prefect resolve --destination ./luma-output
        $ luma-prefect resolve 3f9c2a81 --generation-id 4665a07c-7641-4809-a133-10786201bb56
        ```
    """
    from luma_prefect._exceptions import LumaError
    from luma_prefect._ids import check_generation_id
    from luma_prefect._models import Generation, GenerationState
    from luma_prefect.ledger._records import Ledger
    from luma_prefect.storage import storage_for

    try:
        ledger = Ledger(storage_for(destination))
        if key is None:
            if generation_id or abandon:
                _fail("give the KEY of the submit to resolve (run without options to list).")
            _print_in_doubt(ledger.in_doubt(), destination)
            return
        if bool(generation_id) == abandon:
            _fail("give either --generation-id ID or --abandon.")
        intent = ledger.find_in_doubt(key)
        if abandon:
            ledger.drop_in_doubt(intent.key, "abandoned with luma-prefect resolve")
            typer.echo(f"Submit {intent.key} abandoned: it is no longer reported.")
            return
        gid = check_generation_id(generation_id)
        ledger.resolve_submission(
            intent.key, Generation(id=gid, state=GenerationState.PENDING), "by hand"
        )
    except (LumaError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(
        f"Submit {intent.key} is generation {gid}: collect-pending (or `luma-prefect collect "
        f"{gid} --destination {shlex.quote(destination)}`) downloads and publishes it."
    )


def _print_in_doubt(intents: list[Any], destination: str) -> None:
    if not intents:
        typer.echo(f"No submit in doubt in {destination}.")
        return
    typer.echo(f"{len(intents)} submit(s) in doubt in {destination} (never sent again):")
    for intent in intents:
        why = intent.reason or "the run stopped before the answer was recorded"
        typer.echo(f"  {intent.key}  since {intent.at}  prompt {intent.prompt[:60]!r}")
        typer.echo(f"      flow run {intent.flow_run_id}: {why[:160]}")
    typer.echo(
        "Find each in the relay's task list, then: luma-prefect resolve KEY --generation-id ID "
        "(or --abandon if the relay created nothing)."
    )


@app.command()
def check(
    block: str | None = typer.Argument(
        None, help="Saved LumaRelayCredentials block (default: LUMA_RELAY_* or luma-relay)."
    ),
    timeout: float = typer.Option(15.0, help="Longest time for the whole check, in seconds."),
) -> None:
    """Prove a relay's base URL, style and key with one free read; print one line.

    Tells a wrong key from a wrong URL from a wrong style. Exit code 0 when all work.

    Example:
        ```console
        $ luma-prefect check luma-relay
        OK: https://relay.example answers the generations style under /luma and accepts ...
        ```
    """
    result = _resolve(block).check(timeout_seconds=timeout)
    if not result.ok:
        _fail(result.message)
    typer.echo(result.message)


@app.command()
def demo(
    destination: str = typer.Option("luma-output", help="Folder for the files."),
    batch: int = typer.Option(3, help="Generations in the collect-generations batch."),
) -> None:
    """Run the main job end to end on the built-in simulator and Prefect's embedded API.

    Example:
        ```console
        $ luma-prefect demo
        ```
    """
    _quiet_prefect()
    import asyncio

    from luma_prefect._models import GenerationRequest
    from luma_prefect.credentials import LumaRelayCredentials
    from luma_prefect.flows import collect_generations, generate_video
    from luma_prefect.simulator import SimulatorConfig, run_simulator

    config = SimulatorConfig(pending_seconds=1.0, processing_seconds=3.0, duration_jitter=0.3)
    with run_simulator(config) as sim, _console_logs_without_tracebacks():
        typer.echo(f"Relay simulator at {sim.base_url} ({sim.style} style).")
        credentials = LumaRelayCredentials.model_validate(sim.connection())
        typer.echo("1/2 generate-video: submit, wait, download, publish ...")
        published = asyncio.run(
            generate_video(
                prompt="a red fox running through fresh snow, golden hour",
                credentials=credentials,
                destination=destination,
                poll_interval_seconds=0.5,
                max_poll_interval_seconds=2.0,
            )
        )
        _print_published([published])

        async def submit_batch() -> list[str]:
            async with credentials.get_client() as client:
                return [
                    (await client.submit_generation(GenerationRequest(prompt=p))).id
                    for p in _DEMO_PROMPTS[:batch]
                ]

        ids = asyncio.run(submit_batch())
        typer.echo(f"2/2 collect-generations: {len(ids)} generations submitted elsewhere ...")
        outcomes = asyncio.run(
            collect_generations(
                generation_ids=ids,
                credentials=credentials,
                destination=destination,
                poll_interval_seconds=0.5,
                max_poll_interval_seconds=2.0,
            )
        )
        _print_outcomes(outcomes)
        counters = sim.counters()
        typer.echo(
            f"Relay requests: {sum(counters.requests.values())} "
            f"({counters.submits_accepted} paid submits), {counters.bytes_served:,} bytes."
        )
    typer.secho(
        f"Done: files and manifests are under {os.path.abspath(destination)}", fg=typer.colors.GREEN
    )


_DEMO_PROMPTS = [
    "waves rolling onto a black sand beach at dawn",
    "a paper boat drifting down a rainy street",
    "timelapse of clouds over a mountain lake",
    "a hummingbird hovering over a red flower",
    "city lights flickering on at dusk, aerial view",
]


def _quiet_prefect() -> None:
    # Telemetry logs a network error offline; the temporary server's shutdown is chatty.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")


def _print_published(published: list[Any]) -> None:
    for item in published:
        typer.echo(f"Generation {item.generation_id}:")
        for name, asset in item.downloaded.assets.items():
            typer.echo(f"  {name:<11} {asset.path}  ({asset.bytes:,} bytes)")
        typer.echo(f"  {'manifest':<11} {item.manifest_path}")


def _print_outcomes(outcomes: list[Any]) -> None:
    published = [o.published for o in outcomes if o.published is not None]
    _print_published(published)
    for outcome in outcomes:
        if not outcome.ok:
            typer.secho(
                f"Generation {outcome.generation_id}: {outcome.status}: {outcome.error}",
                fg=typer.colors.YELLOW,
            )


_register_fleet_commands(app)  # serve, install-automations


def main() -> None:
    """Entry point of the `luma-prefect` console script.

    Example:
        ```python
        from luma_prefect.cli import main

        main()  # reads sys.argv
        ```
    """
    app()


if __name__ == "__main__":
    main()
