"""Luma Dream Machine video generation, through API relays, for Prefect 3.

Every name below is loaded on first use (PEP 562), so `import luma_prefect` imports neither
Prefect nor httpx nor pydantic: the command line and the simulator start fast. Tasks live in
`luma_prefect.tasks`, flows in `luma_prefect.flows`, and the offline relay simulator in
`luma_prefect.simulator`.

Example:
    ```python
    from luma_prefect import GenerationRequest, LumaRelayCredentials

    credentials = await LumaRelayCredentials.aload("luma-relay")
    async with credentials.get_client() as client:
        generation = await client.submit_generation(GenerationRequest(prompt="cat dance"))
    ```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from luma_prefect._exceptions import (
        LumaAuthError,
        LumaConfigurationError,
        LumaDownloadError,
        LumaError,
        LumaGenerationFailed,
        LumaHTTPError,
        LumaNotFoundError,
        LumaProtocolError,
        LumaRateLimitError,
        LumaRequestError,
        LumaServerError,
        LumaSubmitUncertainError,
        LumaTransportError,
        LumaWaitTimeout,
    )
    from luma_prefect._models import (
        ApiStyle,
        AspectRatio,
        Asset,
        Generation,
        GenerationId,
        GenerationRequest,
        GenerationState,
        ImageAsset,
        VideoAsset,
    )
    from luma_prefect._outcomes import (
        AssetName,
        DownloadedAsset,
        DownloadedGeneration,
        GenerationOutcome,
        OutcomeStatus,
        PublishedGeneration,
    )
    from luma_prefect._retry import RetryPolicy
    from luma_prefect.credentials import LumaRelayCredentials
    from luma_prefect.relay._client import LumaClient
    from luma_prefect.relay._parsing import parse_generation
    from luma_prefect.tasks._common import Destination
    from luma_prefect.wait._settings import WaitSettings

__version__ = "0.1.0"

# Where each public name lives; keep in step with the TYPE_CHECKING block above.
_SOURCES: dict[str, str] = {
    **dict.fromkeys(
        (
            "LumaAuthError",
            "LumaConfigurationError",
            "LumaDownloadError",
            "LumaError",
            "LumaGenerationFailed",
            "LumaHTTPError",
            "LumaNotFoundError",
            "LumaProtocolError",
            "LumaRateLimitError",
            "LumaRequestError",
            "LumaServerError",
            "LumaSubmitUncertainError",
            "LumaTransportError",
            "LumaWaitTimeout",
        ),
        "luma_prefect._exceptions",
    ),
    **dict.fromkeys(
        (
            "ApiStyle",
            "AspectRatio",
            "Asset",
            "Generation",
            "GenerationId",
            "GenerationRequest",
            "GenerationState",
            "ImageAsset",
            "VideoAsset",
        ),
        "luma_prefect._models",
    ),
    **dict.fromkeys(
        (
            "AssetName",
            "DownloadedAsset",
            "DownloadedGeneration",
            "GenerationOutcome",
            "OutcomeStatus",
            "PublishedGeneration",
        ),
        "luma_prefect._outcomes",
    ),
    "RetryPolicy": "luma_prefect._retry",
    "LumaRelayCredentials": "luma_prefect.credentials",
    "LumaClient": "luma_prefect.relay._client",
    "parse_generation": "luma_prefect.relay._parsing",
    "Destination": "luma_prefect.tasks._common",
    "WaitSettings": "luma_prefect.wait._settings",
}

__all__ = [
    "ApiStyle",
    "AspectRatio",
    "Asset",
    "AssetName",
    "Destination",
    "DownloadedAsset",
    "DownloadedGeneration",
    "Generation",
    "GenerationId",
    "GenerationOutcome",
    "GenerationRequest",
    "GenerationState",
    "ImageAsset",
    "LumaAuthError",
    "LumaClient",
    "LumaConfigurationError",
    "LumaDownloadError",
    "LumaError",
    "LumaGenerationFailed",
    "LumaHTTPError",
    "LumaNotFoundError",
    "LumaProtocolError",
    "LumaRateLimitError",
    "LumaRelayCredentials",
    "LumaRequestError",
    "LumaServerError",
    "LumaSubmitUncertainError",
    "LumaTransportError",
    "LumaWaitTimeout",
    "OutcomeStatus",
    "PublishedGeneration",
    "RetryPolicy",
    "VideoAsset",
    "WaitSettings",
    "__version__",
    "parse_generation",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'luma_prefect' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
