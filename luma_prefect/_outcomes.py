"""What the main job hands on: downloaded files and published results."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from luma_prefect._models import Generation, GenerationId

__all__ = [
    "AssetName",
    "DownloadedAsset",
    "DownloadedGeneration",
    "GenerationOutcome",
    "OutcomeStatus",
    "PublishedGeneration",
]

AssetName = Literal["video", "thumbnail", "last_frame"]
"""The assets `download_generation` can fetch; `video` is the best video source available."""


class DownloadedAsset(BaseModel):
    """One file of a generation, written and verified in the destination.

    Example:
        ```python
        asset = downloaded.assets["video"]
        print(asset.path, asset.bytes, asset.sha256)
        ```
    """

    model_config = ConfigDict(frozen=True)

    name: AssetName = Field(description="Which asset this is.")
    path: str = Field(description="Where the file was written: a local path or a storage URL.")
    file_name: str = Field(description="The file's name inside the generation's folder.")
    bytes: int = Field(description="Size of the file.")
    sha256: str = Field(description="SHA-256 of the file, hex.")
    content_type: str | None = Field(default=None, description="The server's content type.")
    source_kind: str = Field(
        description="Which link it came from: video_raw, download_url, url, thumbnail, ..."
    )
    source_url: str = Field(description="The link, without query string or credentials.")
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    reused: bool = Field(
        default=False, description="True when an identical file was already there."
    )


class DownloadedGeneration(BaseModel):
    """A completed generation and its files in the destination.

    Example:
        ```python
        from luma_prefect.tasks import download_generation

        downloaded = await download_generation(credentials, generation, "./luma-output")
        print(downloaded.folder, list(downloaded.assets))
        ```
    """

    model_config = ConfigDict(frozen=True)

    generation: Generation
    destination: str = Field(description="The destination root, as given (path or URL).")
    folder: str = Field(description="The generation's folder: <destination>/<generation id>.")
    assets: dict[str, DownloadedAsset] = Field(default_factory=dict)
    relay_base_url: str | None = Field(default=None, description="Relay the links came from.")
    relay_style: str | None = Field(default=None, description="The relay's API style.")
    downloaded_at: datetime | None = None


class PublishedGeneration(BaseModel):
    """A generation whose files, manifest, Prefect artifacts and events are published.

    Example:
        ```python
        from luma_prefect.flows import generate_video

        published = await generate_video(prompt="a fox in the snow")
        print(published.manifest_path)
        ```
    """

    model_config = ConfigDict(frozen=True)

    generation_id: GenerationId
    downloaded: DownloadedGeneration
    manifest_path: str = Field(description="Where manifest.json was written.")
    artifact_keys: list[str] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="Event names emitted.")


OutcomeStatus = Literal["published", "failed", "timed_out", "not_found", "error"]


class GenerationOutcome(BaseModel):
    """How one generation of a batch ended: published, or why not.

    Example:
        ```python
        from luma_prefect.flows import collect_generations

        for outcome in await collect_generations(ids):
            print(outcome.generation_id, outcome.status, outcome.error)
        ```
    """

    model_config = ConfigDict(frozen=True)

    # A plain string: an outcome also reports an id that was refused as unsafe.
    generation_id: str
    status: OutcomeStatus
    published: PublishedGeneration | None = None
    # The error itself, for flows that re-raise it (not serialised with the outcome).
    _exception: Exception | None = PrivateAttr(default=None)
    generation: Generation | None = Field(default=None, description="The last state seen.")
    error: str | None = Field(default=None, description="What went wrong, when it did.")

    def with_exception(self, exception: Exception) -> GenerationOutcome:
        """This outcome, carrying the error that ended it (for callers that re-raise it).

        Example:
            ```python
            outcome = GenerationOutcome(generation_id=gid, status="error").with_exception(exc)
            ```
        """
        self._exception = exception
        return self

    @property
    def exception(self) -> Exception | None:
        """The error that ended this generation, when this process saw it happen.

        Example:
            ```python
            if outcome.exception is not None:
                raise outcome.exception
            ```
        """
        return self._exception

    @property
    def ok(self) -> bool:
        """True when the generation was published.

        Example:
            ```python
            failed = [o for o in outcomes if not o.ok]
            ```
        """
        return self.status == "published"
