"""Luma Dream Machine video generation, through API relays, for Prefect 3.

Kept light on purpose: Prefect imports every collection when it starts, so this only
re-exports. Tasks live in `luma_prefect.tasks`, flows in `luma_prefect.flows`, and the
offline relay simulator in `luma_prefect.simulator`.

Example:
    ```python
    from luma_prefect import GenerationRequest, LumaRelayCredentials

    credentials = LumaRelayCredentials.load("BLOCK_NAME")
    async with credentials.get_client() as client:
        generation = await client.submit_generation(GenerationRequest(prompt="cat dance"))
    ```
"""

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
from luma_prefect.relay._parsing import parse_generation, parse_generations

__version__ = "0.1.0"

__all__ = [
    "ApiStyle",
    "AspectRatio",
    "Asset",
    "AssetName",
    "DownloadedAsset",
    "DownloadedGeneration",
    "Generation",
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
    "__version__",
    "parse_generation",
    "parse_generations",
]
