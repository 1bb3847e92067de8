"""Where each operation lives in each relay style (see relay-api.md, "Styles of API")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from luma_prefect._exceptions import LumaConfigurationError
from luma_prefect._models import ApiStyle

__all__ = ["Route", "StyleRoutes", "check_generation_id", "normalise_prefix", "public_url"]

API_STYLES: tuple[ApiStyle, ...] = ("generations", "task", "official")
_OFFICIAL_ROOT = "/dream-machine/v1/generations"
# Relays use uuids; allow any plain token, but never anything that can move in a path.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")


def check_generation_id(generation_id: object) -> str:
    """The id itself when it is safe in a URL path and a folder name; else a clear error.

    Example:
        ```python
        check_generation_id("4665a07c-7641-4809-a133-10786201bb56")  # returned unchanged
        check_generation_id("../etc")  # raises LumaConfigurationError
        ```
    """
    text = str(generation_id).strip() if generation_id is not None else ""
    if not _SAFE_ID.match(text) or ".." in text:
        raise LumaConfigurationError(
            f"{str(generation_id)[:80]!r} is not a valid generation id: ids are letters, "
            "digits, '-', '_', '.' and ':' (a uuid on every known relay), without '..' or '/'."
        )
    return text


def public_url(url: str) -> str:
    """The URL without query string, fragment or credentials (signed links carry secrets).

    Example:
        ```python
        public_url("https://u:p@cdn.example/v.mp4?X-Amz-Signature=abc")
        # "https://cdn.example/v.mp4"
        ```
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def normalise_prefix(prefix: str | None) -> str:
    """`/luma`, `luma/` and `/luma/` all give `/luma`; empty gives an empty prefix.

    Example:
        ```python
        assert normalise_prefix("pro/luma/") == "/pro/luma"
        ```
    """
    cleaned = (prefix or "").strip().strip("/")
    return f"/{cleaned}" if cleaned else ""


@dataclass(frozen=True)
class Route:
    """One HTTP call: method, path under the base URL, query parameters.

    Example:
        ```python
        Route("GET", "/luma/task", {"id": "abc"})
        ```
    """

    method: str
    path: str
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class StyleRoutes:
    """The routes of one relay style under one prefix.

    Example:
        ```python
        routes = StyleRoutes("generations", "/luma")
        routes.query("abc").path  # "/luma/generations/abc"
        ```
    """

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

    def download_url(self, generation_id: str) -> Route | None:
        """GET of the no-watermark link; the official API has none."""
        if self.style == "official":
            return None
        return Route("GET", f"{self._root}/{_quoted(generation_id)}/download_video_url")


def _quoted(generation_id: str) -> str:
    return quote(check_generation_id(generation_id), safe="")
