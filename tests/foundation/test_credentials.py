"""The credentials block: secrecy of the key, settings passed to the client, env, public API."""

from __future__ import annotations

import pickle

import cloudpickle
import httpx
import pytest
import respx
from pydantic import ValidationError

import luma_prefect
from luma_prefect import (
    Generation,
    GenerationRequest,
    GenerationState,
    LumaAuthError,
    LumaClient,
    LumaConfigurationError,
    LumaDownloadError,
    LumaError,
    LumaGenerationFailed,
    LumaHTTPError,
    LumaNotFoundError,
    LumaProtocolError,
    LumaRateLimitError,
    LumaRelayCredentials,
    LumaRequestError,
    LumaServerError,
    LumaSubmitUncertainError,
    LumaTransportError,
    LumaWaitTimeout,
)

SECRET = "sk-SECRET-123"
HEADER_SECRET = "org-SECRET-456"
GID = "4665a07c-7641-4809-a133-10786201bb56"


def make_credentials(**overrides) -> LumaRelayCredentials:
    settings = {
        "base_url": "https://relay.example",
        "api_key": SECRET,
        "extra_headers": {"X-Org-Key": HEADER_SECRET},
        **overrides,
    }
    return LumaRelayCredentials(**settings)


# --- the key stays secret ----------------------------------------------------------------------


class TestKeyIsNeverShown:
    @pytest.mark.parametrize(
        "render",
        [
            pytest.param(repr, id="repr"),
            pytest.param(str, id="str"),
            pytest.param(lambda block: block.model_dump_json(), id="model_dump_json"),
            pytest.param(lambda block: str(block.model_dump()), id="model_dump"),
            pytest.param(lambda block: str(block.model_dump(mode="json")), id="model_dump json"),
        ],
    )
    def test_block_renderings_hide_the_key_and_headers(self, render):
        """No rendering of the block shows the key or the extra header values."""
        text = render(make_credentials())
        assert SECRET not in text
        assert HEADER_SECRET not in text

    def test_the_key_is_still_there_for_use(self):
        """Hidden is not lost: the key can be read on purpose."""
        assert make_credentials().api_key.get_secret_value() == SECRET

    async def test_client_renderings_hide_the_key(self):
        """The client's repr and str show the relay, not the key."""
        async with make_credentials().get_client() as client:
            for text in (repr(client), str(client), repr(vars(client))):
                assert SECRET not in text
                assert HEADER_SECRET not in text

    @pytest.mark.parametrize(
        "body",
        [
            {
                "error": {
                    "message": "无效的令牌 (request id: 2024122213384012)",
                    "type": "new_api_error",
                }
            },
            {"detail": {"reason": "unauthorized secret token", "code": 1}},
            {"detail": "Invalid API key is provided"},
            {"code": "unauthorized", "message": "bad key", "data": None},
        ],
    )
    async def test_401_errors_hold_no_key(self, body):
        """Nothing in a 401 error (message, repr, attributes) contains the key."""
        with respx.mock(base_url="https://relay.example") as router:
            router.get(f"/luma/generations/{GID}").respond(401, json=body)
            async with make_credentials().get_client() as client:
                with pytest.raises(LumaAuthError) as caught:
                    await client.get_generation(GID)
        error = caught.value
        for text in (str(error), repr(error), repr(vars(error)), repr(error.args)):
            assert SECRET not in text
            assert HEADER_SECRET not in text

    async def test_transport_errors_hold_no_key(self):
        """A connection failure's message names the relay, not the key."""
        with respx.mock(base_url="https://relay.example") as router:
            router.get(f"/luma/generations/{GID}").mock(side_effect=httpx.ConnectError)

            async def no_sleep(_: float) -> None:
                return None

            async with make_credentials().get_client(sleep=no_sleep) as client:
                with pytest.raises(LumaTransportError) as caught:
                    await client.get_generation(GID)
        assert "relay.example" in str(caught.value)
        assert SECRET not in str(caught.value)
        assert SECRET not in repr(vars(caught.value))


# --- get_client --------------------------------------------------------------------------------


class TestGetClient:
    async def test_settings_reach_the_request(self):
        """base_url, style, prefix, timeout and extra headers all shape the actual request."""
        credentials = make_credentials(
            base_url="https://gw.example/",
            api_style="task",
            route_prefix="pro/luma/",
            timeout_seconds=12.5,
        )
        with respx.mock(base_url="https://gw.example") as router:
            route = router.get("/pro/luma/task", params={"id": GID}).respond(
                200,
                json={"code": "success", "message": "", "data": {"id": GID, "state": "SUCCESS"}},
            )
            async with credentials.get_client() as client:
                generation = await client.get_generation(GID)
        assert generation.state is GenerationState.COMPLETED
        request = route.calls.last.request
        assert str(request.url) == f"https://gw.example/pro/luma/task?id={GID}"
        assert request.headers["Authorization"] == f"Bearer {SECRET}"
        assert request.headers["X-Org-Key"] == HEADER_SECRET
        assert request.extensions["timeout"]["read"] == 12.5

    async def test_client_attributes_follow_the_block(self):
        """The client is built from the block's fields."""
        credentials = make_credentials(api_style="official", max_connections=3)
        async with credentials.get_client() as client:
            assert isinstance(client, LumaClient)
            assert client.base_url == "https://relay.example"
            assert client.api_style == "official"
            assert client.max_connections == 3

    async def test_overrides_go_to_the_client(self):
        """Keyword arguments of get_client override the block's settings."""
        async with make_credentials().get_client(batch_size=7, api_style="task") as client:
            assert client.batch_size == 7
            assert client.api_style == "task"

    async def test_official_style_ignores_the_prefix(self):
        """Luma's own API lives at /dream-machine/v1 whatever route_prefix says."""
        credentials = make_credentials(api_style="official", route_prefix="/vip/luma")
        with respx.mock(base_url="https://relay.example") as router:
            route = router.post("/dream-machine/v1/generations").respond(
                201, json={"id": "o-1", "state": "queued", "assets": None}
            )
            async with credentials.get_client() as client:
                await client.submit_generation(GenerationRequest(prompt="a lake"))
        assert route.call_count == 1


# --- validation and from_env -------------------------------------------------------------------


class TestValidation:
    @pytest.mark.parametrize(
        "base_url", ["ftp://relay.example", "relay.example", "javascript:alert(1)", ""]
    )
    def test_invalid_base_url_is_refused(self, base_url):
        """Only http(s) base URLs are accepted."""
        with pytest.raises(ValidationError, match="base_url"):
            make_credentials(base_url=base_url)

    @pytest.mark.parametrize("style", ["graphql", "Generations", ""])
    def test_invalid_style_is_refused(self, style):
        """Only the three styles are accepted."""
        with pytest.raises(ValidationError, match="api_style"):
            make_credentials(api_style=style)

    def test_base_url_and_prefix_are_normalised(self):
        """Trailing slashes go; the prefix gets exactly one leading slash."""
        credentials = make_credentials(
            base_url=" https://relay.example/ ", route_prefix="vip/luma/"
        )
        assert credentials.base_url == "https://relay.example"
        assert credentials.route_prefix == "/vip/luma"

    @pytest.mark.parametrize("timeout", [0, -1])
    def test_non_positive_timeout_is_refused(self, timeout):
        """A zero or negative timeout cannot work."""
        with pytest.raises(ValidationError):
            make_credentials(timeout_seconds=timeout)


class TestFromEnv:
    def test_reads_the_environment(self, monkeypatch):
        """LUMA_RELAY_BASE_URL, LUMA_RELAY_API_KEY and LUMA_RELAY_API_STYLE are read."""
        monkeypatch.setenv("LUMA_RELAY_BASE_URL", "https://env.example/")
        monkeypatch.setenv("LUMA_RELAY_API_KEY", SECRET)
        monkeypatch.setenv("LUMA_RELAY_API_STYLE", "task")
        monkeypatch.setenv("LUMA_RELAY_ROUTE_PREFIX", "/pro/luma")
        credentials = LumaRelayCredentials.from_env()
        assert credentials.base_url == "https://env.example"
        assert credentials.api_key.get_secret_value() == SECRET
        assert credentials.api_style == "task"
        assert credentials.route_prefix == "/pro/luma"

    def test_style_and_prefix_have_defaults(self):
        """Without a style or prefix: generations under /luma."""
        credentials = LumaRelayCredentials.from_env(
            {"LUMA_RELAY_BASE_URL": "https://env.example", "LUMA_RELAY_API_KEY": SECRET}
        )
        assert (credentials.api_style, credentials.route_prefix) == ("generations", "/luma")

    @pytest.mark.parametrize(
        ("environ", "missing", "present"),
        [
            ({}, ["LUMA_RELAY_BASE_URL", "LUMA_RELAY_API_KEY"], []),
            ({"LUMA_RELAY_API_KEY": SECRET}, ["LUMA_RELAY_BASE_URL"], ["LUMA_RELAY_API_KEY"]),
            (
                {"LUMA_RELAY_BASE_URL": "https://e.example"},
                ["LUMA_RELAY_API_KEY"],
                ["LUMA_RELAY_BASE_URL"],
            ),
            (
                {"LUMA_RELAY_BASE_URL": "", "LUMA_RELAY_API_KEY": ""},
                ["LUMA_RELAY_BASE_URL", "LUMA_RELAY_API_KEY"],
                [],
            ),
        ],
    )
    def test_names_what_is_missing(self, environ, missing, present):
        """The error names each missing variable, and only those."""
        with pytest.raises(LumaConfigurationError) as caught:
            LumaRelayCredentials.from_env(environ)
        for name in missing:
            assert name in str(caught.value)
        for name in present:
            assert name not in str(caught.value)
        assert SECRET not in str(caught.value)

    def test_unknown_style_is_named(self):
        """A wrong LUMA_RELAY_API_STYLE is refused, naming the variable and the choices."""
        with pytest.raises(LumaConfigurationError) as caught:
            LumaRelayCredentials.from_env(
                {
                    "LUMA_RELAY_BASE_URL": "https://env.example",
                    "LUMA_RELAY_API_KEY": SECRET,
                    "LUMA_RELAY_API_STYLE": "rest",
                }
            )
        assert "LUMA_RELAY_API_STYLE" in str(caught.value)
        assert "generations" in str(caught.value)

    def test_invalid_base_url_in_the_environment_is_refused(self):
        """The environment's base URL is validated like any other."""
        with pytest.raises(ValidationError):
            LumaRelayCredentials.from_env(
                {"LUMA_RELAY_BASE_URL": "relay.example", "LUMA_RELAY_API_KEY": SECRET}
            )


# --- public API and errors ---------------------------------------------------------------------

HTTP_ERRORS = [
    LumaAuthError,
    LumaNotFoundError,
    LumaRateLimitError,
    LumaServerError,
    LumaRequestError,
]
ALL_ERRORS = [
    *HTTP_ERRORS,
    LumaProtocolError,
    LumaHTTPError,
    LumaConfigurationError,
    LumaTransportError,
    LumaSubmitUncertainError,
    LumaGenerationFailed,
    LumaWaitTimeout,
    LumaDownloadError,
]


class TestPublicApi:
    @pytest.mark.parametrize(
        "name",
        [
            "LumaRelayCredentials",
            "LumaClient",
            "Generation",
            "GenerationState",
            "GenerationRequest",
            "LumaError",
            "LumaAuthError",
            "LumaNotFoundError",
            "LumaRateLimitError",
            "LumaServerError",
            "LumaProtocolError",
            "LumaRequestError",
        ],
    )
    def test_importable_from_the_package(self, name):
        """The documented names import from `luma_prefect` and are listed in __all__."""
        assert getattr(luma_prefect, name) is not None
        assert name in luma_prefect.__all__

    def test_all_names_exist(self):
        """Every name in __all__ is really there."""
        for name in luma_prefect.__all__:
            assert hasattr(luma_prefect, name), name

    @pytest.mark.parametrize("error_class", ALL_ERRORS, ids=lambda c: c.__name__)
    def test_every_error_is_a_luma_error(self, error_class):
        """One `except LumaError` catches everything the package raises on purpose."""
        assert issubclass(error_class, LumaError)

    @pytest.mark.parametrize("error_class", HTTP_ERRORS, ids=lambda c: c.__name__)
    def test_http_errors_share_a_base(self, error_class):
        """Every relay refusal is a LumaHTTPError."""
        assert issubclass(error_class, LumaHTTPError)

    def test_submit_uncertain_is_a_transport_error(self):
        """An uncertain submit is caught with the transport errors."""
        assert issubclass(LumaSubmitUncertainError, LumaTransportError)


def sample_errors() -> list[LumaError]:
    generation = Generation(id=GID, state="failed", failure_reason="moderation")
    http = {
        "status_code": 503,
        "relay_message": "busy",
        "relay_code": "overloaded",
        "request_id": "req-1",
        "generation_id": GID,
    }
    return [
        *[cls(f"{cls.__name__} happened", **http) for cls in HTTP_ERRORS],
        LumaRateLimitError("slow down", retry_after=7.5, **{**http, "status_code": 429}),
        LumaProtocolError("odd body", generation_id=GID, status_code=200, body_excerpt="<html>"),
        LumaConfigurationError("bad id", generation_id="../x"),
        LumaTransportError("down", generation_id=GID),
        LumaSubmitUncertainError("maybe sent", generation_id=GID),
        LumaGenerationFailed(generation),
        LumaWaitTimeout(GID, timeout_seconds=60, generation=generation, until=("completed",)),
        LumaDownloadError("disk full", generation_id=GID),
    ]


class TestPickling:
    @pytest.mark.parametrize(
        "dumps, loads",
        [(pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)],
        ids=["pickle", "cloudpickle"],
    )
    @pytest.mark.parametrize("error", sample_errors(), ids=lambda e: type(e).__name__)
    def test_errors_survive_pickling_with_their_attributes(self, error, dumps, loads):
        """Prefect pickles task exceptions: class, message and every attribute come back."""
        copy = loads(dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert vars(copy) == vars(error)

    def test_rate_limit_keeps_retry_after(self):
        """The attribute a caller acts on (retry_after) survives in particular."""
        error = LumaRateLimitError("slow", retry_after=3.0, status_code=429, relay_message="x")
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.retry_after, copy.status_code, copy.relay_message) == (3.0, 429, "x")

    def test_generation_failed_keeps_the_generation(self):
        """LumaGenerationFailed comes back with its generation and reason."""
        error = LumaGenerationFailed(Generation(id=GID, state="failed", failure_reason="nsfw"))
        copy = pickle.loads(pickle.dumps(error))
        assert copy.generation.id == GID
        assert copy.failure_reason == "nsfw"
        assert "nsfw" in str(copy)


@pytest.mark.parametrize("status", [400, 401, 503])
async def test_a_key_echoed_by_the_relay_is_blanked_in_errors(status: int) -> None:
    """Some relays quote the key they refused; it must not reach logs through our errors."""
    with respx.mock(base_url="https://relay.example") as router:
        router.get("/luma/generations/abc").mock(
            return_value=httpx.Response(
                status, json={"error": {"message": f"key {SECRET} refused", "type": "x"}}
            )
        )
        client = make_credentials().get_client(retry=luma_prefect.RetryPolicy(max_retries=0))
        async with client:
            with pytest.raises(LumaError) as caught:
                await client.get_generation("abc")
    assert SECRET not in str(caught.value)
    assert SECRET not in (getattr(caught.value, "relay_message", "") or "")
    assert "refused" in str(caught.value)


def test_no_extra_headers_is_an_empty_dict_and_the_form_has_no_none_toggle() -> None:
    """Blocks saved before held null; Prefect's form shows a None toggle for `X | None`."""
    block = LumaRelayCredentials(base_url="https://relay.example", api_key="k", extra_headers=None)
    assert block.extra_headers.get_secret_value() == {}
    schema = LumaRelayCredentials.model_json_schema()["properties"]["extra_headers"]
    assert schema["type"] == "object" and "anyOf" not in schema
