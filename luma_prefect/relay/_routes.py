"""Where each operation lives in each relay style (see relay-api.md, "Styles of API")."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._ids import check_generation_id
from luma_prefect._models import ApiStyle

__all__ = ["Route", "StyleRoutes", "normalise_prefix"]

API_STYLES: tuple[ApiStyle, ...] = ("generations", "task", "official")
_OFFICIAL_ROOT = "/dream-machine/v1/generations"


def normalise_prefix(prefix: str | None) -> str:
    """`/luma`, `luma/` and `/luma/` all give `/luma`; empty gives an empty prefix."""
    cleaned = (prefix or "").strip().strip("/")
    return f"/{cleaned}" if cleaned else ""


@dataclass(frozen=True)
class Route:
    """One HTTP call: method, path under the base URL, query parameters."""

    method: str
    path: str
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class StyleRoutes:
    """The routes of one relay style under one prefix."""

    style: ApiStyle
    prefix: str = "/luma"

    def __post_init__(self) -> None:
        if self.style not in API_STYLES:
            raise LumaConfigurationError(
                f"Unknown api_style {self.style!r}: use one of {', '.join(API_STYLES)}."
            )

    @property
    def _root(self) -> str:
        return _OFFICIAL_ROOT if self.style == "official" else f"{self.prefix}/generations"

    def submit(self) -> Route:
        """POST that creates a generation (paid)."""
        return Route("POST", self._root)

    def extend(self, generation_id: str) -> Route:
        """POST that continues a generation; the official API has no such route (submit)."""
        if self.style == "official":
            return self.submit()
        return Route("POST", f"{self._root}/{_quoted(generation_id)}/extend")

    def query(self, generation_id: str) -> Route:
        """GET of one generation."""
        if self.style == "task":
            return Route("GET", f"{self.prefix}/task", {"id": generation_id})
        return Route("GET", f"{self._root}/{_quoted(generation_id)}")

    def batch(self) -> Route | None:
        """POST of many ids at once, where the style has one."""
        return Route("POST", f"{self.prefix}/tasks") if self.style == "generations" else None

    def list_recent(self, limit: int = 100) -> Route | None:
        """GET of the newest generations, newest first; only the official API has one."""
        if self.style != "official":
            return None
        return Route("GET", _OFFICIAL_ROOT, {"limit": str(limit), "offset": "0"})

    def download_url(self, generation_id: str) -> Route | None:
        """GET of the no-watermark link; the official API has none."""
        if self.style == "official":
            return None
        return Route("GET", f"{self._root}/{_quoted(generation_id)}/download_video_url")


def _quoted(generation_id: str) -> str:
    return quote(check_generation_id(generation_id), safe="")
