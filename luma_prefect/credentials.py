"""The Prefect block that holds a relay's address, key and style."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from prefect.types import SecretDict
from pydantic import Field, SecretStr, field_validator

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._models import ApiStyle
from luma_prefect.relay._client import LumaClient
from luma_prefect.relay._routes import API_STYLES, normalise_prefix

__all__ = ["LumaRelayCredentials", "saved_block_name"]

ENV_BASE_URL = "LUMA_RELAY_BASE_URL"
ENV_API_KEY = "LUMA_RELAY_API_KEY"
ENV_API_STYLE = "LUMA_RELAY_API_STYLE"
ENV_ROUTE_PREFIX = "LUMA_RELAY_ROUTE_PREFIX"


class LumaRelayCredentials(CredentialsBlock):
    """Address, key and style of a Luma relay (or of Luma's own API).

    The key is a secret: it is stored encrypted by Prefect and never shown in `repr`, logs,
    errors or artifacts.

    Example:
        Load saved credentials and query a generation:
        ```python
        from luma_prefect import LumaRelayCredentials

        credentials = LumaRelayCredentials.load("BLOCK_NAME")
        async with credentials.get_client() as client:
            generation = await client.get_generation("4665a07c-7641-4809-a133-10786201bb56")
        ```
    """

    _block_type_name = "Luma Relay Credentials"
    _block_type_slug = "luma-relay-credentials"
    _documentation_url = "https://docs.lumalabs.ai/docs/api"
    _description = (
        "Address, key and style of a Luma Dream Machine relay, for the luma_prefect tasks "
        "and flows."
    )

    base_url: str = Field(
        default=...,
        description="The relay's base URL, without the route prefix, e.g. https://yunwu.ai.",
        examples=["https://yunwu.ai"],
    )
    api_key: SecretStr = Field(
        default=..., description="The relay key, sent as `Authorization: Bearer <key>`."
    )
    api_style: ApiStyle = Field(
        default="generations",
        description=(
            "How the relay exposes Luma: generations (most relays), task (wrapped answers, "
            "GET /task?id=), or official (Luma's own /dream-machine/v1 API)."
        ),
    )
    route_prefix: str = Field(
        default="/luma",
        description="Path before /generations on the relay, e.g. /luma or /pro/luma.",
    )
    timeout_seconds: float = Field(
        default=30.0, gt=0, description="Timeout of one HTTP request, in seconds."
    )
    max_connections: int = Field(
        default=20, ge=1, le=1000, description="Most connections open to the relay at once."
    )
    extra_headers: SecretDict | None = Field(
        default=None,
        description="Extra HTTP headers sent with every request (kept secret), if any.",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value

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
        extra: Mapping[str, Any] = (
            self.extra_headers.get_secret_value() if (self.extra_headers is not None) else {}
        )
        settings: dict[str, Any] = {
            "api_style": self.api_style,
            "route_prefix": self.route_prefix,
            "timeout_seconds": self.timeout_seconds,
            "max_connections": self.max_connections,
            "extra_headers": {str(k): SecretStr(str(v)) for k, v in extra.items()},
        }
        settings.update(overrides)
        return LumaClient(self.base_url, self.api_key, **settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LumaRelayCredentials:
        """Credentials from `LUMA_RELAY_BASE_URL`, `LUMA_RELAY_API_KEY`, `LUMA_RELAY_API_STYLE`
        and `LUMA_RELAY_ROUTE_PREFIX` (the last two optional).

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
        return cls(
            base_url=env[ENV_BASE_URL],
            api_key=SecretStr(env[ENV_API_KEY]),
            api_style=style,  # type: ignore[arg-type]
            route_prefix=env.get(ENV_ROUTE_PREFIX) or "/luma",
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
