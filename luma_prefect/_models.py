"""The typed shapes of Luma generations, their assets and the requests that create them.

The relays disagree on shapes; `_parsing.py` turns each of them into these models, and
`GenerationRequest.to_wire` renders a request in each style's words.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)

__all__ = [
    "ApiStyle",
    "AspectRatio",
    "Asset",
    "Duration",
    "FormText",
    "Generation",
    "GenerationId",
    "GenerationRequest",
    "GenerationState",
    "ImageAsset",
    "ModelName",
    "Resolution",
    "Switch",
    "VideoAsset",
]

ApiStyle = Literal["generations", "task", "official"]
"""The three ways relays expose Luma (see relay-api.md, "Styles of API")."""

AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21"]
"""Aspect ratios every relay style accepts."""

# The options relays differ on: the known values as a choice in Prefect's forms (tabs
# "known values" / "other value"), any other word still allowed; "" leaves the option out of
# the request, so the relay uses its own default.
_ModelChoice = Union[  # noqa: UP007 (a runtime alias: `|` on Annotated needs 3.11)
    Annotated[
        Literal["", "ray-v2", "ray-v1", "ray-2", "ray-flash-2", "ray-1-6"],
        Field(title="known values"),
    ],
    Annotated[str, Field(title="other value")],
]

_ResolutionChoice = Union[  # noqa: UP007
    Annotated[Literal["", "720p", "1080p"], Field(title="known values")],
    Annotated[str, Field(title="other value")],
]

_DurationChoice = Union[  # noqa: UP007
    Annotated[Literal["", "5s"], Field(title="known values")],
    Annotated[str, Field(title="other value")],
]


def _form(choice: Any) -> Any:
    """How a field reads in Prefect's forms: `choice`'s schema, not the `X | None` toggle.

    The field still holds None when unset; the form starts from `_EMPTY` / `_OFF` (its
    `json_schema_extra`) and its "" means unset too.
    """
    return WithJsonSchema(TypeAdapter(choice).json_schema())


FormText = Annotated[str | None, _form(str)]
"""Optional text that reads as a text field in Prefect's forms ("" or None: not given)."""
ModelName = Annotated[str | None, _form(_ModelChoice)]
"""A model name: ray-v1/ray-v2 on relays, ray-2/ray-flash-2/ray-1-6 on the official API."""
Resolution = Annotated[str | None, _form(_ResolutionChoice)]
"""A resolution: 720p or 1080p where relays take one ("" or None: the relay's default)."""
Duration = Annotated[str | None, _form(_DurationChoice)]
"""A duration: 5s where relays take one ("" or None: the relay's default)."""

_RELAYS_DEFAULT = "relay's default"


def _switch(value: Any) -> Any:
    """The form's words for a three-way switch: the relay's default (None), on, off."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("", _RELAYS_DEFAULT):
            return None
        if word in ("on", "off"):
            return word == "on"
    return value


Switch = Annotated[
    bool | None,
    BeforeValidator(_switch),
    _form(Literal["relay's default", "on", "off"]),
]
"""On, off or None (the relay decides); a choice of those three words in Prefect's forms."""

_EMPTY: dict[str, Any] = {"default": ""}
_OFF: dict[str, Any] = {"default": False}

# Relays use uuids; allow any plain token, but never anything that can move in a path.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


def generation_id_problem(generation_id: object) -> str | None:
    """Why `generation_id` is not a safe id (in a URL path and a folder name), or None."""
    text = str(generation_id).strip() if generation_id is not None else ""
    if _SAFE_ID.match(text) and ".." not in text:
        return None
    return (
        f"{str(generation_id)[:80]!r} is not a valid generation id: ids are letters, "
        "digits, '-', '_', '.' and ':' (a uuid on every known relay), without '..' or '/'."
    )


def _valid_generation_id(generation_id: str) -> str:
    # A ValueError is what pydantic turns into a validation error; plain strings are checked
    # with `check_generation_id`, which raises the library's own error.
    problem = generation_id_problem(generation_id)
    if problem:
        raise ValueError(problem)
    return generation_id.strip()


GenerationId = Annotated[str, AfterValidator(_valid_generation_id)]
"""A generation id, checked (by pydantic, and Prefect for flow parameters) to be safe in a
URL path and a folder name: letters, digits, `-_.:`, no `..` (a uuid on every relay)."""

_STATE_WORDS: dict[str, str] = {
    **dict.fromkeys(("pending", "queued", "not_start", "submitted"), "pending"),
    **dict.fromkeys(("processing", "dreaming", "in_progress", "running"), "processing"),
    **dict.fromkeys(("completed", "success", "succeed"), "completed"),
    **dict.fromkeys(("failed", "failure"), "failed"),
}


class GenerationState(str, Enum):
    """A generation's state, normalised from every word the relays use.

    Example:
        ```python
        GenerationState.from_relay("IN_PROGRESS")  # GenerationState.PROCESSING
        GenerationState.from_relay("dreaming").is_terminal  # False
        ```
    """

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @classmethod
    def from_relay(cls, word: object) -> GenerationState:
        """Map a relay's state word (any case) to a state; unknown words give `UNKNOWN`.

        Example:
            ```python
            assert GenerationState.from_relay("SUCCESS") is GenerationState.COMPLETED
            ```
        """
        if isinstance(word, GenerationState):
            return word
        if not isinstance(word, str):
            return cls.UNKNOWN
        return cls(_STATE_WORDS.get(word.strip().lower(), "unknown"))

    @property
    def is_terminal(self) -> bool:
        """True for `completed` and `failed`; `unknown` is not terminal: keep polling.

        Example:
            ```python
            assert GenerationState.FAILED.is_terminal
            ```
        """
        return self in (GenerationState.COMPLETED, GenerationState.FAILED)


class Asset(BaseModel):
    """One media file of a generation, as the relay describes it.

    Example:
        ```python
        Asset(url="https://cdn.example/thumb.jpg", width=1360, height=752)
        ```
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str | None = Field(default=None, description="Where the relay serves the file.")
    width: int | None = Field(default=None, description="Width in pixels, when given.")
    height: int | None = Field(default=None, description="Height in pixels, when given.")
    media_type: str | None = Field(default=None, description="The relay's media type word.")

    @field_validator("width", "height", mode="before")
    @classmethod
    def _tolerant_int(cls, value: Any) -> int | None:
        # Relays send numbers as strings, floats or garbage; a bad size must not lose the asset.
        try:
            return int(float(value)) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None


class VideoAsset(Asset):
    """A video file; `download_url` is the relay's no-watermark link, when it adds one.

    Example:
        ```python
        VideoAsset(url="https://cdn.example/v.mp4", download_url="https://cdn.example/raw.mp4")
        ```
    """

    download_url: str | None = Field(default=None, description="No-watermark link, if any.")
    duration: float | None = Field(default=None, description="Length in seconds, when given.")

    @field_validator("duration", mode="before")
    @classmethod
    def _tolerant_float(cls, value: Any) -> float | None:
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None


class ImageAsset(Asset):
    """An image file: a thumbnail or the last frame.

    Example:
        ```python
        ImageAsset(url="https://cdn.example/last_frame.jpg")
        ```
    """


class Generation(BaseModel):
    """One Luma generation, whatever relay style it came from.

    `raw` keeps the relay's whole object unchanged, so nothing the relay said is lost.

    Example:
        ```python
        generation = await client.get_generation("4665a07c-7641-4809-a133-10786201bb56")
        if generation.state is GenerationState.COMPLETED:
            print(generation.video.download_url or generation.video.url)
        ```
    """

    model_config = ConfigDict(frozen=True)

    id: GenerationId = Field(description="The generation's id (a uuid on every known relay).")
    state: GenerationState = Field(description="The normalised state.")
    raw_state: str | None = Field(default=None, description="The relay's own state word.")
    prompt: str | None = None
    aspect_ratio: str | None = None
    created_at: datetime | None = None
    failure_reason: str | None = None
    estimate_wait_seconds: float | None = None
    video: VideoAsset | None = None
    video_raw: VideoAsset | None = None
    thumbnail: ImageAsset | None = None
    last_frame: ImageAsset | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("created_at", mode="before")
    @classmethod
    def _tolerant_time(cls, value: Any) -> datetime | None:
        # The zero time 0001-01-01 means "unset" to the relays' Go backends.
        if value in (None, "") or (isinstance(value, str) and value.startswith("0001-01-01")):
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, tz=timezone.utc) if value > 0 else None
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None

    @field_validator("estimate_wait_seconds", mode="before")
    @classmethod
    def _tolerant_seconds(cls, value: Any) -> float | None:
        try:
            seconds = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None
        return seconds if seconds is not None and seconds >= 0 else None

    @property
    def is_terminal(self) -> bool:
        """True once the generation is `completed` or `failed`.

        Example:
            ```python
            while not (generation := await client.get_generation(gid)).is_terminal: ...
            ```
        """
        return self.state.is_terminal

    @property
    def best_video_url(self) -> str | None:
        """The best link to the video: no-watermark original first, then the watermarked one.

        Example:
            ```python
            url = generation.best_video_url
            ```
        """
        for url in (
            self.video_raw and self.video_raw.url,
            self.video and self.video.download_url,
            self.video and self.video.url,
        ):
            if url:
                return url
        return None


_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def _check_media_url(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.lower().startswith(("http://", "https://")) or _DATA_URI.match(value):
        return value
    raise ValueError(
        f"must be an http(s) URL or a data:image/...;base64, URI (got one starting {value[:16]!r})"
    )


class GenerationRequest(BaseModel):
    """What to generate: a prompt and/or start and end images, and options.

    Validated before anything is sent, and rendered in each relay style's own words by
    `to_wire`.

    Example:
        ```python
        request = GenerationRequest(prompt="a red fox in the snow", aspect_ratio="9:16")
        generation = await client.submit_generation(request)
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: FormText = Field(
        default=None,
        json_schema_extra=_EMPTY,
        description="What the video shows. May stay empty when a start image is given.",
    )
    aspect_ratio: AspectRatio = Field(default="16:9", description="Frame shape of the video.")
    # Left as a three-way choice: None lets the relay decide, and its default may be True.
    expand_prompt: Switch = Field(
        default=None,
        json_schema_extra={"default": _RELAYS_DEFAULT},
        description="Let the service enrich the prompt (relay's default: the relay decides).",
    )
    # The form's False sends "loop": false, which is every relay's default anyway.
    loop: Annotated[bool | None, _form(bool)] = Field(
        default=None, json_schema_extra=_OFF, description="Make the video loop seamlessly."
    )
    image_url: FormText = Field(
        title="Image URL",
        default=None,
        json_schema_extra=_EMPTY,
        description="Optional start frame: an http(s) URL or a data:image base64 URI.",
    )
    image_end_url: FormText = Field(
        title="End image URL",
        default=None,
        json_schema_extra=_EMPTY,
        description="Optional end frame: an http(s) URL or a data:image base64 URI.",
    )
    model: ModelName = Field(
        default=None,
        json_schema_extra=_EMPTY,
        description="Model: ray-v2 or ray-v1 on relays, ray-2, ray-flash-2 or ray-1-6 on the "
        "official API. Empty: the relay's default.",
    )
    resolution: Resolution = Field(
        default=None,
        json_schema_extra=_EMPTY,
        description="720p or 1080p. Empty: the relay's default.",
    )
    duration: Duration = Field(
        default=None,
        json_schema_extra=_EMPTY,
        description="5s on the relays that take one. Empty: the relay's default.",
    )
    callback_url: FormText = Field(
        title="Callback URL",
        default=None,
        json_schema_extra=_EMPTY,
        description="Optional URL the relay calls when the generation is done.",
    )

    @field_validator(
        "image_url",
        "image_end_url",
        "model",
        "resolution",
        "duration",
        "callback_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # Prefect's forms send "" for an option left empty: the same as not giving it.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("prompt")
    @classmethod
    def _strip_prompt(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("image_url", "image_end_url")
    @classmethod
    def _media_url(cls, value: str | None) -> str | None:
        return _check_media_url(value)

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _prompt_or_image(self) -> GenerationRequest:
        if not self.prompt and not self.image_url and not self.image_end_url:
            raise ValueError("a generation needs a prompt or an image (image_url)")
        return self

    def to_wire(self, style: ApiStyle, *, extend_id: str | None = None) -> dict[str, Any]:
        """The JSON body for a submit in the given relay style; unset options are left out.

        `extend_id` (official style only) makes the request continue that generation, by
        putting it in the first keyframe.

        Example:
            ```python
            GenerationRequest(prompt="cat dance").to_wire("generations")
            # {"user_prompt": "cat dance", "aspect_ratio": "16:9"}
            ```
        """
        if style == "official":
            frame0: dict[str, str] | None = None
            if extend_id is not None:
                frame0 = {"type": "generation", "id": extend_id}
            elif self.image_url:
                frame0 = {"type": "image", "url": self.image_url}
            keyframes = {
                name: frame
                for name, frame in (
                    ("frame0", frame0),
                    ("frame1", self.image_end_url and {"type": "image", "url": self.image_end_url}),
                )
                if frame
            }
            body: dict[str, Any] = {
                "prompt": self.prompt,
                "model": self.model,
                "aspect_ratio": self.aspect_ratio,
                "loop": self.loop,
                "keyframes": keyframes or None,
                "callback_url": self.callback_url,
                "resolution": self.resolution,
                "duration": self.duration,
            }
        else:
            body = {
                "user_prompt": self.prompt,
                "aspect_ratio": self.aspect_ratio,
                "expand_prompt": self.expand_prompt,
                "loop": self.loop,
                "image_url": self.image_url,
                "image_end_url": self.image_end_url,
                "notify_hook": self.callback_url,
                "model_name": self.model,
                "resolution": self.resolution,
                "duration": self.duration,
            }
        return {key: value for key, value in body.items() if value is not None}

    def fingerprint(self) -> str:
        """A stable hash of the request, the same for equal requests in any process.

        Used to recognise a resubmission of the same request (idempotent submits, ledger).

        Example:
            ```python
            assert GenerationRequest(prompt="a").fingerprint() == GenerationRequest(
                prompt="a"
            ).fingerprint()
            ```
        """
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()
