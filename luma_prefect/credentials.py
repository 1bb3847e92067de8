"""The Prefect block that holds a relay's address, key and style."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.types import SecretDict
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, field_validator

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._models import ApiStyle
from luma_prefect._retry import RetryPolicy
from luma_prefect.relay._check import CredentialsCheck, check_relay
from luma_prefect.relay._client import LumaClient, check_base_url
from luma_prefect.relay._routes import API_STYLES, normalise_prefix

if TYPE_CHECKING:
    import httpx

__all__ = ["CredentialsCheck", "LumaRelayCredentials", "saved_block_name"]

ENV_BASE_URL = "LUMA_RELAY_BASE_URL"
ENV_API_KEY = "LUMA_RELAY_API_KEY"
ENV_API_STYLE = "LUMA_RELAY_API_STYLE"
ENV_ROUTE_PREFIX = "LUMA_RELAY_ROUTE_PREFIX"
ENV_VERIFY = "LUMA_RELAY_VERIFY"
ENV_ALLOW_PRIVATE = "LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# Prefect's block schema takes only absolute http(s) URLs for both (pydantic HttpUrl: a
# data: URI or a relative link fails at save time), so both point into this project's
# repository: the logo is the file LOGO_PATH as GitHub serves it raw (with an image content
# type, which a github.com/.../blob/ page is not), the docs are the README's block section.
# The project has no public address yet: PROJECT_URL is a placeholder to set when it has one;
# both URLs follow it. Until then the UI shows a broken logo and the docs link leads nowhere
# (`make ui-check` serves LOGO_URL from the repository's file to check the rest).
PROJECT_URL = "https://github.com/luma-prefect/luma-prefect"
LOGO_PATH = "docs/logo.png"
LOGO_URL = (
    PROJECT_URL.replace("https://github.com/", "https://raw.githubusercontent.com/", 1)
    + f"/main/{LOGO_PATH}"
)
DOCUMENTATION_URL = f"{PROJECT_URL}#the-lumarelaycredentials-block"


class LumaRelayCredentials(CredentialsBlock):
    """Address, key and style of a Luma relay (or of Luma's own API).

    The key is a secret: it is stored encrypted by Prefect and never shown in `repr`, logs,
    errors or artifacts. `check()` (`acheck()` in async code) proves the settings with one
    free read.

    Example:
        In sync code `load`, in async code `await aload` (there `load` returns a coroutine):
        ```python
        from luma_prefect import LumaRelayCredentials

        # Sync code (a script, a sync flow or task):
        credentials = LumaRelayCredentials.load("BLOCK_NAME")
        print(credentials.check())  # OK: https://... answers the generations style ...

        # Async code (an async flow or task): the same block, loaded with aload.
        async def check_relay(block_name: str):
            credentials = await LumaRelayCredentials.aload(block_name)
            print(await credentials.acheck())
        ```

        Query a generation from async code (an async flow or task, or `asyncio.run`):
        ```python
        import asyncio

        from luma_prefect import LumaRelayCredentials

        async def main() -> None:
            credentials = await LumaRelayCredentials.aload("BLOCK_NAME")
            async with credentials.get_client() as client:
                generation = await client.get_generation("4665a07c-7641-4809-a133-10786201bb56")
                print(generation.state)

        asyncio.run(main())
        ```
    """

    # A refused base_url with user:password@ must not be echoed back by pydantic's message.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "Luma Relay Credentials"
    _block_type_slug = "luma-relay-credentials"
    _logo_url = HttpUrl(LOGO_URL)
    _documentation_url = HttpUrl(DOCUMENTATION_URL)
    _description = (
        "Address, key and style of a Luma Dream Machine relay, for the luma_prefect tasks "
        "and flows."
    )

    base_url: str = Field(
        default=...,
        title="Base URL",
        description="The relay's base URL, without the route prefix, e.g. https://yunwu.ai.",
        examples=["https://yunwu.ai"],
    )
    api_key: SecretStr = Field(
        default=...,
        title="API key",
        description="The relay key, sent as `Authorization: Bearer <key>`.",
    )
    api_style: ApiStyle = Field(
        default="generations",
        title="API style",
        description=(
            "How the relay exposes Luma: generations (most relays), task (wrapped answers, "
            "GET /task?id=), or official (Luma's own /dream-machine/v1 API)."
        ),
    )
    route_prefix: str = Field(
        title="Route prefix",
        default="/luma",
        description="Path before /generations on the relay, e.g. /luma or /pro/luma.",
    )
    timeout_seconds: float = Field(
        title="Timeout (seconds)",
        default=30.0,
        gt=0,
        description="Timeout of one HTTP request, in seconds.",
    )
    max_connections: int = Field(
        title="Max connections",
        default=20,
        ge=1,
        le=1000,
        description="Most connections open to the relay at once.",
    )
    # Not `| None`: Prefect's form would show a None toggle; no headers is an empty dict.
    extra_headers: SecretDict = Field(
        title="Extra headers",
        default_factory=lambda: SecretDict({}),
        description="Extra HTTP headers sent with every request (kept secret), if any.",
    )
    verify: bool | str = Field(
        title="Verify TLS",
        default=True,
        description=(
            "TLS verification for the relay and media links: true (the certifi bundle, or "
            "SSL_CERT_FILE), false (not recommended), or the path of a CA bundle."
        ),
    )
    allow_private_media_hosts: bool = Field(
        title="Allow private media hosts",
        default=False,
        description=(
            "Fetch media links (and their redirects) that point at private, loopback or "
            "link-local addresses. Off by default: a relay cannot make the worker fetch "
            "from its own network."
        ),
    )

    @field_validator("extra_headers", mode="before")
    @classmethod
    def _no_headers_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # blocks saved before held null

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        # Refuses user:password@ too: a block's base_url shows in `prefect block inspect`
        # and in flow-run parameters, where a key has no place.
        try:
            return check_base_url(value)
        except LumaConfigurationError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("route_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return normalise_prefix(value)

    def get_client(self, **overrides: Any) -> LumaClient:
        """A new `LumaClient` for this relay; use it with `async with`.

        Keyword arguments go to `LumaClient` (e.g. `retry=`, `batch_size=`, `sleep=`).

        Example:
            ```python
            async with credentials.get_client() as client:
                generation = await client.get_generation(generation_id)
            ```
        """
        extra: Mapping[str, Any] = self.extra_headers.get_secret_value()
        settings: dict[str, Any] = {
            "api_style": self.api_style,
            "route_prefix": self.route_prefix,
            "timeout_seconds": self.timeout_seconds,
            "max_connections": self.max_connections,
            "extra_headers": {str(k): SecretStr(str(v)) for k, v in extra.items()},
            "verify": self.verify,
        }
        settings.update(overrides)
        return LumaClient(self.base_url, self.api_key, **settings)

    def get_media_client(self, max_connections: int = 3) -> httpx.AsyncClient:
        """A client for the media links (CDN) of this relay's generations: never the key.

        It verifies TLS as `verify` says and refuses private hosts unless
        `allow_private_media_hosts`.

        Example:
            ```python
            async with credentials.get_media_client() as http:
                response = await http.get(generation.best_video_url)
            ```
        """
        from luma_prefect.delivery._transfer import media_client

        return media_client(
            max_connections,
            verify=self.verify,
            allow_private_hosts=self.allow_private_media_hosts,
        )

    async def acheck(self, timeout_seconds: float = 15.0) -> CredentialsCheck:
        """Prove the base URL, style and key with one free read (a query of a made-up id).

        Never raises for a bad setting: the result says which one is wrong (`key`, `url` or
        `style`) in one line. Two more reads only when the style looks wrong.

        Example:
            ```python
            result = await credentials.acheck()
            if not result.ok:
                raise SystemExit(result.message)
            ```
        """
        once = RetryPolicy(max_retries=0)
        return await check_relay(
            lambda style: self.get_client(api_style=style, retry=once),
            self.api_style,
            timeout_seconds=timeout_seconds,
        )

    def check(self, timeout_seconds: float = 15.0) -> CredentialsCheck:
        """`acheck()` for sync code (in async code, `await credentials.acheck()`).

        Example:
            ```python
            print(LumaRelayCredentials.load("luma-relay").check())
            ```
        """
        from prefect.utilities.asyncutils import run_coro_as_sync

        result = run_coro_as_sync(self.acheck(timeout_seconds))
        assert result is not None
        return result

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LumaRelayCredentials:
        """Credentials from `LUMA_RELAY_BASE_URL`, `LUMA_RELAY_API_KEY`, `LUMA_RELAY_API_STYLE`
        and `LUMA_RELAY_ROUTE_PREFIX`, `LUMA_RELAY_VERIFY` (true, false or a CA bundle path)
        and `LUMA_RELAY_ALLOW_PRIVATE_MEDIA_HOSTS` (1 to allow; all but the first two optional).

        Example:
            ```python
            LumaRelayCredentials.from_env().save("luma-relay", overwrite=True)
            ```
        """
        env = os.environ if environ is None else environ
        missing = [name for name in (ENV_BASE_URL, ENV_API_KEY) if not env.get(name)]
        if missing:
            raise LumaConfigurationError(
                f"Set {' and '.join(missing)} to use a relay from the environment "
                "(or save a LumaRelayCredentials block and pass its name)."
            )
        style = env.get(ENV_API_STYLE) or "generations"
        if style not in API_STYLES:
            raise LumaConfigurationError(
                f"{ENV_API_STYLE}={style!r} is not a relay style: use one of "
                f"{', '.join(API_STYLES)}."
            )
        verify_text = (env.get(ENV_VERIFY) or "true").strip()
        verify: bool | str = verify_text
        if verify_text.lower() in _YES + _NO:
            verify = verify_text.lower() in _YES
        return cls(
            base_url=env[ENV_BASE_URL],
            api_key=SecretStr(env[ENV_API_KEY]),
            api_style=style,
            route_prefix=env.get(ENV_ROUTE_PREFIX) or "/luma",
            verify=verify,
            allow_private_media_hosts=(env.get(ENV_ALLOW_PRIVATE) or "").lower() in _YES,
        )


def saved_block_name(block: LumaRelayCredentials) -> str | None:
    """The name a block was saved or loaded under; None for a block never saved by name.

    Example:
        ```python
        saved_block_name(LumaRelayCredentials.load("luma-relay"))  # "luma-relay"
        ```
    """
    if getattr(block, "_is_anonymous", False):
        return None
    name = getattr(block, "_block_document_name", None)
    return name if isinstance(name, str) and name else None
