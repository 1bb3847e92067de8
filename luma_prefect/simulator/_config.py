"""What a simulated relay looks like (`SimulatorConfig`) and how it misbehaves (`Fault`)."""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

__all__ = [
    "API_ROUTES",
    "ASPECT_RATIOS",
    "ROUTES",
    "Fault",
    "FaultKind",
    "SimulatorConfig",
]

Style = Literal["generations", "task", "official"]
BatchShape = Literal["bare", "task_wrapper"]
SubmitShape = Literal["object", "array"]

STYLES: tuple[str, ...] = ("generations", "task", "official")
ROUTES: tuple[str, ...] = ("submit", "extend", "query", "batch", "download_url", "media", "admin")
API_ROUTES: tuple[str, ...] = ("submit", "extend", "query", "batch", "download_url")
# Routes whose answers carry generation objects: where presentation faults act.
_RENDERING_ROUTES: tuple[str, ...] = ("submit", "extend", "query", "batch")
ASPECT_RATIOS: tuple[str, ...] = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21")


class FaultKind(str, Enum):
    """The ways a simulated relay can misbehave; see `Fault` for the knobs of each.

    Example:
        ```python
        Fault(FaultKind.RATE_LIMIT, retry_after="2", times=1)
        FaultKind("rate_limit") is FaultKind.RATE_LIMIT  # JSON / admin HTTP use the values
        ```
    """

    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    SLOW = "slow"
    DROP_CONNECTION = "drop_connection"
    MALFORMED_JSON = "malformed_json"
    ERROR_BODY_200 = "error_body_200"
    NOT_FOUND_AFTER_SUBMIT = "not_found_after_submit"
    NO_DOWNLOAD_URL = "no_download_url"
    EXPIRED_LINK = "expired_link"
    NO_BATCH_ROUTE = "no_batch_route"
    UNKNOWN_STATE = "unknown_state"
    FAIL_GENERATION = "fail_generation"
    STALL_BODY = "stall_body"
    TRICKLE_BODY = "trickle_body"
    REDIRECT_LOOP = "redirect_loop"
    REDIRECT_TO_HTTP = "redirect_to_http"
    ACCEPT_THEN_ERROR = "accept_then_error"
    OTHER_GENERATION = "other_generation"
    TRICKLE_ANSWER = "trickle_answer"
    HUGE_ANSWER = "huge_answer"
    NESTED_JSON = "nested_json"
    ECHO_KEY = "echo_key"


# Where each kind acts when `Fault.routes` is empty.
DEFAULT_ROUTES: dict[FaultKind, tuple[str, ...]] = {
    FaultKind.RATE_LIMIT: API_ROUTES,
    FaultKind.SERVER_ERROR: (*API_ROUTES, "media"),
    FaultKind.SLOW: (*API_ROUTES, "media"),
    FaultKind.DROP_CONNECTION: (*API_ROUTES, "media"),
    FaultKind.MALFORMED_JSON: API_ROUTES,
    FaultKind.ERROR_BODY_200: API_ROUTES,
    FaultKind.NOT_FOUND_AFTER_SUBMIT: ("query", "batch", "download_url"),
    FaultKind.NO_DOWNLOAD_URL: _RENDERING_ROUTES,
    FaultKind.EXPIRED_LINK: ("media",),
    FaultKind.NO_BATCH_ROUTE: ("batch",),
    FaultKind.UNKNOWN_STATE: _RENDERING_ROUTES,
    # Decides an outcome rather than an answer, so it is not tied to a route.
    FaultKind.FAIL_GENERATION: ROUTES,
    FaultKind.STALL_BODY: ("media",),
    FaultKind.TRICKLE_BODY: ("media",),
    FaultKind.REDIRECT_LOOP: ("media",),
    FaultKind.REDIRECT_TO_HTTP: ("media",),
    FaultKind.ACCEPT_THEN_ERROR: ("submit", "extend"),
    FaultKind.OTHER_GENERATION: ("query",),
    FaultKind.TRICKLE_ANSWER: API_ROUTES,
    FaultKind.HUGE_ANSWER: API_ROUTES,
    FaultKind.NESTED_JSON: API_ROUTES,
    FaultKind.ECHO_KEY: API_ROUTES,
}


@dataclass(frozen=True)
class Fault:
    """One misbehaviour switched on in a simulator, for every request or only some.

    Filters combine: `routes` (empty: every route the kind applies to), `generation_id`
    (only requests about that generation) and `prompt_contains` (only generations whose
    prompt contains the text, so a test can target generations before they exist).
    `times` makes it fire that many times then retire (None: until removed). Each answer
    it changes counts once: an error answer, a delayed request, a rendered object, a
    generation made to fail.

    Hostile answers, on the API routes: `TRICKLE_ANSWER` sends the answer one byte every
    `delay_seconds` (per-read timeouts never fire); `HUGE_ANSWER` streams a valid JSON
    array of `after_bytes` bytes (default 300 MB); `NESTED_JSON` answers a 200 with arrays
    nested 100,000 deep; `ECHO_KEY` answers `status` (a 5xx) whose message repeats the
    key the request presented, as some relays do.

    `DROP_CONNECTION` and `MALFORMED_JSON` break the answer *after* the relay did the work:
    on a submit, the paid generation exists although the client never read its id, as on
    a real flaky relay. `RATE_LIMIT`, `SERVER_ERROR` and `ERROR_BODY_200` refuse before.
    `ACCEPT_THEN_ERROR` creates the paid generation, then answers `status` (a gateway's
    408, 400 or 5xx after forwarding) without its id. `OTHER_GENERATION` answers a query
    for one generation with another generation's object.

    Routes each kind acts on by default: the API routes (submit, extend, query, batch,
    download_url) for RATE_LIMIT, MALFORMED_JSON, ERROR_BODY_200; submit and extend for
    ACCEPT_THEN_ERROR; query for OTHER_GENERATION; those and media for
    SERVER_ERROR, SLOW, DROP_CONNECTION; query, batch, download_url for
    NOT_FOUND_AFTER_SUBMIT; the routes that render generations for NO_DOWNLOAD_URL and
    UNKNOWN_STATE; media for EXPIRED_LINK (its fresh links come from query, batch and
    download_url); batch for NO_BATCH_ROUTE; FAIL_GENERATION decides outcomes, not answers.

    Example:
        ```python
        with run_simulator() as sim:
            sim.add_fault(Fault(FaultKind.SERVER_ERROR, status=503, times=3, routes=("query",)))
            sim.add_fault(Fault(FaultKind.FAIL_GENERATION, prompt_contains="forbidden"))
            sim.add_fault(Fault(FaultKind.DROP_CONNECTION, routes=("media",), after_bytes=1000))
        ```
    """

    kind: FaultKind
    routes: tuple[str, ...] = ()
    generation_id: str | None = None
    prompt_contains: str | None = None
    times: int | None = None
    status: int = 503
    retry_after: str | None = None
    delay_seconds: float = 0.0
    seconds: float = 5.0
    after_bytes: int | None = None

    def __post_init__(self) -> None:
        # Accept the plain JSON spellings too, so admin HTTP and kwargs share one path.
        object.__setattr__(self, "kind", _kind(self.kind))
        routes = (self.routes,) if isinstance(self.routes, str) else tuple(self.routes)
        unknown = [r for r in routes if r not in ROUTES]
        if unknown:
            raise ValueError(f"unknown route names {unknown}: use some of {', '.join(ROUTES)}")
        object.__setattr__(self, "routes", routes)
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1 (or None: until removed)")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status} is not an HTTP status")
        if self.delay_seconds < 0 or self.seconds < 0:
            raise ValueError("delay_seconds and seconds cannot be negative")
        if self.after_bytes is not None and self.after_bytes < 0:
            raise ValueError("after_bytes cannot be negative")

    def applies_to(self, route: str) -> bool:
        """Whether this fault can act on requests to `route`.

        Example:
            ```python
            assert Fault(FaultKind.RATE_LIMIT).applies_to("query")
            assert not Fault(FaultKind.RATE_LIMIT, routes=("submit",)).applies_to("query")
            ```
        """
        return route in (self.routes or DEFAULT_ROUTES[self.kind])

    def to_dict(self) -> dict[str, Any]:
        """The fault as plain JSON-ready data (the body of `POST /_simulator/faults`).

        Example:
            ```python
            Fault(FaultKind.SLOW, delay_seconds=2).to_dict()["kind"]  # "slow"
            ```
        """
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["routes"] = list(self.routes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from JSON data; unknown keys are an error, so typos do not pass silently.

        Example:
            ```python
            Fault.from_dict({"kind": "rate_limit", "retry_after": "1", "times": 2})
            ```
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}: use some of {sorted(names)}")
        if "kind" not in data:
            raise ValueError("a fault needs a kind")
        values = dict(data)
        routes = values.get("routes") or ()
        values["routes"] = (routes,) if isinstance(routes, str) else tuple(routes)
        return cls(**values)


def _kind(value: FaultKind | str) -> FaultKind:
    if isinstance(value, FaultKind):
        return value
    text = str(value).strip()
    for kind in FaultKind:
        if text.lower() in (kind.value, kind.name.lower()):
            return kind
    raise ValueError(f"unknown fault kind {value!r}: use one of {[k.value for k in FaultKind]}")


@dataclass(frozen=True)
class SimulatorConfig:
    """How one simulated relay behaves: its API style, key, timings and answer shapes.

    Timings are simulated seconds: a generation is `pending` for `pending_seconds` after
    submit, then `processing` for `processing_seconds`, then `completed` (or `failed`, for
    a seeded `failure_ratio` share and for `FaultKind.FAIL_GENERATION`). With
    `manual_clock=True`, time moves only with `RelaySimulator.advance`.

    `batch_shape` picks the answer of `POST {prefix}/tasks` (a bare array or the task
    wrapper), `submit_shape` whether submits answer `[obj]` (generations style),
    `with_video_raw` whether completed objects carry `video_raw`, `video_bytes` a synthetic
    video body of that many bytes instead of the small real MP4, and `port` a fixed port
    (0: a free one). The server always binds 127.0.0.1.

    Example:
        ```python
        config = SimulatorConfig(style="task", pending_seconds=0.1, processing_seconds=0.2)
        with run_simulator(config) as sim:
            print(sim.base_url, sim.api_key)
        ```
    """

    style: Style = "generations"
    route_prefix: str = "/luma"
    api_key: str | None = None
    pending_seconds: float = 1.0
    processing_seconds: float = 2.0
    duration_jitter: float = 0.0
    failure_ratio: float = 0.0
    seed: int = 0
    batch_shape: BatchShape = "bare"
    submit_shape: SubmitShape = "object"
    with_video_raw: bool = True
    video_bytes: int | None = None
    manual_clock: bool = False
    port: int = 0

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}: use one of {', '.join(STYLES)}")
        if self.batch_shape not in ("bare", "task_wrapper"):
            raise ValueError("batch_shape must be 'bare' or 'task_wrapper'")
        if self.submit_shape not in ("object", "array"):
            raise ValueError("submit_shape must be 'object' or 'array'")
        for name in ("pending_seconds", "processing_seconds", "duration_jitter"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        if not 0.0 <= self.failure_ratio <= 1.0:
            raise ValueError("failure_ratio must be between 0 and 1")
        if self.duration_jitter >= 1.0:
            raise ValueError("duration_jitter must be below 1 (a fraction, 0.2 = +-20%)")
        if self.video_bytes is not None and self.video_bytes < 0:
            raise ValueError("video_bytes cannot be negative")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        cleaned = self.route_prefix.strip().strip("/")
        object.__setattr__(self, "route_prefix", f"/{cleaned}" if cleaned else "")

    def with_key(self) -> SimulatorConfig:
        """This config with a concrete key: a random `sk-sim-...` one when none was given.

        Example:
            ```python
            SimulatorConfig().with_key().api_key  # "sk-sim-3f9c..."
            ```
        """
        if self.api_key:
            return self
        return dataclasses.replace(self, api_key=f"sk-sim-{secrets.token_hex(16)}")
