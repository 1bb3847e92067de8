"""LumaRelayCredentials meets Prefect's standards for collection blocks (as prefect-email does)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from luma_prefect import LumaRelayCredentials

REPO_ROOT = Path(__file__).parents[2]


class TestLumaRelayCredentialsStandards(BlockStandardTestSuite):
    """Description, documentation URL, field descriptions and a loadable code example."""

    @pytest.fixture
    def block(self) -> type[Block]:
        return LumaRelayCredentials

    def test_block_type_slug_is_stable(self, block: type[Block]) -> None:
        """Saved blocks are found by this slug: renaming it would orphan them."""
        assert block.get_block_type_slug() == "luma-relay-credentials"

    def test_api_key_is_a_secret_field(self, block: type[Block]) -> None:
        """Prefect stores and shows fields listed as secret fields obfuscated."""
        assert "api_key" in block.model_json_schema()["secret_fields"]


def test_field_titles_read_as_written() -> None:
    """The block form shows "Base URL" and "API key", not pydantic's "Base Url"/"Api Key"."""
    properties = LumaRelayCredentials.model_json_schema()["properties"]
    assert properties["base_url"]["title"] == "Base URL"
    assert properties["api_key"]["title"] == "API key"
    assert properties["api_style"]["title"] == "API style"


def test_logo_is_the_square_png_in_the_repository() -> None:
    """What Prefect's image test checks (square, 46-999 px), on the file the logo URL serves
    once the repository is published: the URL itself needs the network, and Pillow is not
    installed."""
    from luma_prefect.credentials import LOGO_PATH, LOGO_URL, PROJECT_URL

    owner_and_name = PROJECT_URL.removeprefix("https://github.com/")
    raw = f"https://raw.githubusercontent.com/{owner_and_name}/main/{LOGO_PATH}"
    assert raw == LOGO_URL
    assert LumaRelayCredentials._logo_url is not None
    assert str(LumaRelayCredentials._logo_url) == LOGO_URL
    header = (REPO_ROOT / LOGO_PATH).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    assert width == height and 45 < width < 1000


def test_logo_and_documentation_urls_are_accepted_by_prefect() -> None:
    """Prefect validates both as absolute http(s) URLs when the block type is saved."""
    block_type = LumaRelayCredentials._to_block_type()
    assert str(block_type.logo_url).startswith("https://")
    assert str(block_type.documentation_url).endswith("#the-lumarelaycredentials-block")


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a README heading: lower case, punctuation dropped, '-' for ' '."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_documentation_link_leads_to_the_readmes_block_section() -> None:
    from luma_prefect.credentials import DOCUMENTATION_URL, PROJECT_URL

    page, _, anchor = DOCUMENTATION_URL.partition("#")
    assert page == PROJECT_URL
    headings = re.findall(r"^#+ (.+)$", (REPO_ROOT / "README.md").read_text(), re.MULTILINE)
    assert anchor in [_github_anchor(h) for h in headings]


def test_the_example_the_ui_shows_loads_the_block_sync_and_async() -> None:
    """Prefect's UI shows only the first ```python block of the example, with the block's
    name put in place of the first "BLOCK_NAME" only: that block has both ways, and the
    placeholder once (a second one would reach the user as a literal "BLOCK_NAME"). The UI
    escapes the snippet twice: a `->` would read `-&gt;` there."""
    example = LumaRelayCredentials.get_code_example() or ""
    shown = re.search(r"```python([\s\S]*?)```", example)
    assert shown is not None
    snippet = shown.group(1)
    assert snippet.count("BLOCK_NAME") == 1
    assert 'credentials = LumaRelayCredentials.load("BLOCK_NAME")' in snippet
    assert "await LumaRelayCredentials.aload(" in snippet
    assert "await credentials.acheck()" in snippet
    assert not set(snippet) & set("<>&")
