"""Exactly once: each accepted submit is a paid generation, recorded, never sent twice.

A submit's identity (`submit_scope`, `relay_of`) keys its intent in the ledger, written
before the POST. A submit is "not created" only when the answer proves it; any other
end leaves it in doubt: never re-sent, resolved where it can be (`settle_in_doubt`, from
Prefect's persisted result or the relay's recent list), else reported with the command
that resolves it.

Ledger calls run in a worker thread (`asyncio.to_thread`): on S3 each is a request of up to
its 60 s deadline, and on the event loop it would hold every other generation's polls and
downloads meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import socket
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.events import emit_event
from prefect.results import get_result_store
from prefect.runtime import flow_run as current_flow_run

from luma_prefect._exceptions import LumaError, LumaSubmitUncertainError
from luma_prefect._models import Generation, GenerationRequest
from luma_prefect._urls import public_url
from luma_prefect.credentials import LumaRelayCredentials, saved_block_name
from luma_prefect.flows._runs import flow_run_finished, unwalked
from luma_prefect.ledger._identity import (
    identity_lock,
    relay_identity,
    result_key,
    root_flow_run_id,
)
from luma_prefect.ledger._records import Ledger, SubmitIntent
from luma_prefect.tasks import submit_generation
from luma_prefect.tasks._common import Destination

__all__ = [
    "EVENT_SUBMIT_IN_DOUBT",
    "emit_in_doubt",
    "persisted_submit",
    "relay_of",
    "resolve_advice",
    "settle_in_doubt",
    "submit_once",
    "submit_scope",
]

# A submit POST has a total deadline of seconds; an intent still "sending" this long after
# it started, in a run that still looks alive, belongs to nobody any more.
_SENDING_STUCK_AFTER = timedelta(hours=1)
EVENT_SUBMIT_IN_DOUBT = "luma.submit.in-doubt"


async def submit_scope(idempotency_key: str | None, position: str | None = None) -> str:
    """The scope of a submit's identity: the user's key, else the root flow run (+ item)."""
    if idempotency_key:
        scope = f"key:{idempotency_key}"
    else:
        flow_run_id = current_flow_run.id
        if not flow_run_id:
            scope = f"process:{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        else:
            try:
                scope = f"run:{await root_flow_run_id(flow_run_id)}"
            except Exception as exc:  # the Prefect API: without the chain, no safe identity
                raise LumaError(
                    "Could not read this flow run's parents from the Prefect API "
                    f"({type(exc).__name__}), so the submit's identity is unknown; nothing was "
                    "sent. Check the Prefect API and run again."
                ) from exc
    return f"{scope}/{position}" if position else scope


def relay_of(block: LumaRelayCredentials) -> str:
    return relay_identity(block.base_url, block.api_style, block.route_prefix)


async def submit_once(
    block: LumaRelayCredentials,
    request: GenerationRequest,
    ledger: Ledger,
    idempotency_key: str | None,
    position: str | None,
    destination: Destination,
) -> str:
    logger = get_run_logger()
    flow_run_id = str(current_flow_run.id) if current_flow_run.id else None
    scope = await submit_scope(idempotency_key, position)
    key = Ledger.submit_key(scope, relay_of(block), request)
    persisted_at = result_key(submit_generation.name, key)
    async with identity_lock(key):
        intent = await asyncio.to_thread(ledger.submission, key)
        if intent is not None and intent.generation_id:
            _say_reused(intent.generation_id, scope)
            return intent.generation_id
        if intent is not None and intent.in_doubt:
            generation = await persisted_submit(intent.result_key or persisted_at)
            if generation is None:
                raise LumaSubmitUncertainError(
                    "An earlier attempt of this run to submit this request broke off after it "
                    "may have reached the relay, so it is not sent again (that could pay "
                    f"twice). {resolve_advice(key, destination, block)}",
                    generation_id=None,
                )
            await _resolve(
                ledger,
                key,
                generation,
                "the submit task's persisted Prefect result",
                flow_run_id=flow_run_id,
            )
            logger.info(
                "Generation %s was submitted by an earlier attempt of this run (found in its "
                "persisted Prefect result): it is reused, not paid again.",
                generation.id,
            )
            return generation.id
        began = await asyncio.to_thread(
            ledger.begin_submission,
            key,
            flow_run_id,
            request=request,
            scope=scope,
            relay_base_url=public_url(block.base_url),  # never user:password
            relay_style=block.api_style,
            result_key=persisted_at,
        )
        if not began:
            # Another process (a run given the same idempotency_key) began this very submit
            # a moment ago, between our read and our write: it pays, we never do.
            raise LumaSubmitUncertainError(
                "This request is being submitted by another run with the same identity right "
                "now, so it is not sent again (that would pay twice). Run again with the same "
                "idempotency_key once that run recorded it: its generation is reused. "
                f"{resolve_advice(key, destination, block)}",
                generation_id=None,
            )
        try:
            # Quoted as in `deliver`: neither can hold a future, and walking them twice per
            # task run was 1.4 ms of CPU per generation (py-spy, 300 generations).
            generation = await submit_generation(unwalked(block), unwalked(request), scope)
        except LumaSubmitUncertainError as exc:
            # The intent stays: never re-sent automatically, reported by every sweep.
            with contextlib.suppress(LumaError, OSError):
                await asyncio.to_thread(ledger.submission_uncertain, key, str(exc))
            intent = await asyncio.to_thread(ledger.submission, key)
            emit_in_doubt(intent or SubmitIntent(key=key), str(exc))
            raise LumaSubmitUncertainError(
                f"{exc} {resolve_advice(key, destination, block)}", generation_id=None
            ) from exc
        except LumaError:
            # Refused before acceptance: nothing was created.
            await asyncio.to_thread(ledger.abandon_submission, key)
            raise
        try:
            await asyncio.to_thread(
                ledger.record_submitted,
                generation,
                key=key,
                request=request,
                flow_run_id=flow_run_id,
                relay_base_url=public_url(block.base_url),  # never user:password
                relay_style=block.api_style,
                credentials_block=saved_block_name(block),  # a name, never the key
            )
        except (OSError, LumaError) as exc:
            # The generation is paid for: never fail it because the ledger could not be
            # written. Its intent stays `sending`; a sweep resolves it from Prefect's result.
            logger.error(
                "Could not record generation %s in the ledger (%s); it goes on. If this run "
                "dies, `luma-prefect collect %s` finishes it (never submit it again).",
                generation.id,
                exc,
                generation.id,
            )
    return generation.id


_TOLD_REUSE: set[str] = set()


def _say_reused(generation_id: str, scope: str) -> None:
    """Log (once per run scope) why an equal submit did not create a generation."""
    logger = get_run_logger()
    if scope in _TOLD_REUSE:
        logger.info("Reusing generation %s (an equal request of this run).", generation_id)
        return
    _TOLD_REUSE.add(scope)
    logger.info(
        "Reusing generation %s: an equal request was already submitted in this run (by an "
        "earlier attempt or an equal call), and one request is paid once per run. To get "
        "another generation of an equal request, pass a different idempotency_key.",
        generation_id,
    )


async def _resolve(
    ledger: Ledger,
    key: str,
    generation: Generation,
    how: str,
    *,
    flow_run_id: str | None = None,
) -> None:
    try:
        await asyncio.to_thread(
            ledger.resolve_submission, key, generation, how, flow_run_id=flow_run_id
        )
    except (OSError, LumaError) as exc:
        get_run_logger().error(
            "Could not record generation %s in the ledger (%s); `luma-prefect collect %s` "
            "finishes it.",
            generation.id,
            exc,
            generation.id,
        )


def _destination_label(destination: Destination) -> str:
    if isinstance(destination, str):
        return destination
    return str(getattr(destination, "basepath", "") or type(destination).__name__)


def resolve_advice(key: str, destination: Destination, block: LumaRelayCredentials) -> str:
    """What a user does about an in-doubt submit: never anything that pays again."""
    where = shlex.quote(_destination_label(destination))
    return (
        f"Nothing is lost: collect-pending reports it (submit {key}). Look for it in the "
        f"relay's task list at {public_url(block.base_url)}, then run `luma-prefect resolve "
        f"{key[:12]} --destination {where} --generation-id ID` to collect it, or `--abandon` "
        "if the relay created nothing."
    )


async def persisted_submit(key: str) -> Generation | None:
    """The submit task's result Prefect persisted under `key`, if this machine can read it."""
    try:
        store = await get_result_store().aupdate_for_task(submit_generation)
        if not await store.aexists(key):
            return None
        result = (await store.aread(key)).result
    except Exception as exc:  # unreadable storage is "not found", never a crash of the run
        get_run_logger().debug("No persisted submit result %s: %r", key, exc)
        return None
    return result if isinstance(result, Generation) else None


def emit_in_doubt(intent: SubmitIntent, reason: str | None = None) -> None:
    """Emit `luma.submit.in-doubt` for one submit whose outcome is unknown."""
    emit_event(
        event=EVENT_SUBMIT_IN_DOUBT,
        resource={
            "prefect.resource.id": f"luma.submit.{intent.key}",
            "prefect.resource.name": (intent.prompt or intent.key)[:120],
        },
        payload={
            "key": intent.key,
            "since": intent.at,
            "flow_run_id": intent.flow_run_id,
            "relay": intent.relay_base_url,
            "reason": reason or intent.reason or "the run stopped before the answer was recorded",
        },
    )


async def settle_in_doubt(
    block: LumaRelayCredentials, ledger: Ledger, destination: Destination
) -> list[SubmitIntent]:
    """Resolve what can be of every submit in doubt; report the rest. Returns the rest.

    A submit is in doubt when its POST may have reached the relay but no generation id was
    recorded (answer lost, run killed in between). Resolved from: the submit task's result
    Prefect persisted, else the relay's list of recent generations (styles that have one).
    Every one left is logged, emitted as `luma.submit.in-doubt` and listed in the
    `luma-submits-in-doubt` artifact, with the command that resolves it.
    """
    logger = get_run_logger()
    left: list[SubmitIntent] = []
    busy = 0
    for intent in await asyncio.to_thread(ledger.in_doubt):
        if intent.relay_base_url not in (None, public_url(block.base_url)):
            continue
        if not await _intent_left_behind(intent):
            busy += 1
            continue
        generation, how = None, ""
        if intent.result_key:
            generation = await persisted_submit(intent.result_key)
            how = "the submit task's persisted Prefect result"
        if generation is None:
            generation = await _found_on_relay(block, ledger, intent)
            how = "the relay's list of recent generations"
        if generation is not None:
            await _resolve(ledger, intent.key, generation, how)
            logger.warning(
                "Submit %s was in doubt: resolved as generation %s, from %s.",
                intent.key,
                generation.id,
                how,
            )
            continue
        left.append(intent)
    if busy:
        logger.info("%d submit(s) are being sent right now; left alone.", busy)
    for intent in left:
        logger.error(
            "Submit %s of %r (since %s) is in doubt: the relay may have created a paid "
            "generation nobody recorded (%s). It is never sent again. %s",
            intent.key,
            intent.prompt,
            intent.at,
            intent.reason or "the run stopped before the answer was recorded",
            resolve_advice(intent.key, destination, block),
        )
        emit_in_doubt(intent)
    if left:
        await acreate_markdown_artifact(
            key="luma-submits-in-doubt",
            markdown=_in_doubt_table(left, destination),
            description=f"{len(left)} paid submit(s) whose outcome is unknown",
        )
    return left


async def _intent_left_behind(intent: SubmitIntent) -> bool:
    """Whether nobody will learn this submit's outcome any more (not sending right now)."""
    if intent.state == "in_doubt" or intent.holder_gone():
        return True
    if not intent.flow_run_id or await flow_run_finished(intent.flow_run_id):
        return True
    started = intent.started()
    return started is None or datetime.now(timezone.utc) - started > _SENDING_STUCK_AFTER


async def _found_on_relay(
    block: LumaRelayCredentials, ledger: Ledger, intent: SubmitIntent
) -> Generation | None:
    """The one recent generation on the relay matching the intent's request and time."""
    started = intent.started()
    if started is None or not intent.request:
        return None
    try:
        async with block.get_client() as client:
            if not client.can_list:
                return None
            recent = await client.list_recent_generations()
    except LumaError as exc:
        get_run_logger().warning("Could not list the relay's recent generations: %s", exc)
        return None
    request = GenerationRequest.model_validate(intent.request)
    known = set(await asyncio.to_thread(ledger.known_generation_ids))
    candidates = [
        g for g in recent if g.id not in known and _same_request(g, request) and _near(g, started)
    ]
    if len(candidates) != 1:
        if candidates:
            get_run_logger().warning(
                "Submit %s matches %d recent generations (%s): resolve it by hand.",
                intent.key,
                len(candidates),
                ", ".join(g.id for g in candidates[:5]),
            )
        return None
    return candidates[0]


# How far a generation's created_at may be from our submit's start (clock skew, queueing).
_MATCH_BEFORE = timedelta(minutes=2)
_MATCH_AFTER = timedelta(minutes=15)


def _near(generation: Generation, started: datetime) -> bool:
    created = generation.created_at
    if created is None:
        return False
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return started - _MATCH_BEFORE <= created <= started + _MATCH_AFTER


def _same_request(generation: Generation, request: GenerationRequest) -> bool:
    echo = generation.raw.get("request") if isinstance(generation.raw, dict) else None
    echo = echo if isinstance(echo, dict) else {}
    prompt = echo.get("prompt", generation.prompt)
    ratio = echo.get("aspect_ratio", generation.aspect_ratio)
    return (prompt or None) == (request.prompt or None) and (
        ratio is None or ratio == request.aspect_ratio
    )


def _in_doubt_table(intents: Sequence[SubmitIntent], destination: Destination) -> str:
    where = shlex.quote(_destination_label(destination))
    lines = [
        "# Paid submits in doubt",
        "",
        "The relay may have created (and charged) these generations, but no id was recorded. "
        "They are never sent again. Find each in the relay's task list, then attach its id "
        f"with `luma-prefect resolve KEY --destination {_md_cell(where)} --generation-id ID`, "
        "or drop it with `--abandon` if the relay created nothing.",
        "",
        "| key | since | prompt | flow run | why |",
        "|---|---|---|---|---|",
    ]
    for i in intents:
        why = i.reason or "the run stopped before the answer was recorded"
        lines.append(
            f"| `{i.key}` | {_md_cell(i.at or '')} | {_md_cell(i.prompt[:80])} | "
            f"{_md_cell(i.flow_run_id or '')} | {_md_cell(why[:200])} |"
        )
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", text.replace("\n", " "))
