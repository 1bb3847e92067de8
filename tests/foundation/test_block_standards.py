"""LumaRelayCredentials meets Prefect's standards for collection blocks (as prefect-email does)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from luma_prefect import LumaRelayCredentials


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
    """What Prefect's image test checks (square, 46-999 px), on our copy of the logo: the
    URL itself needs the network, and Pillow is not installed."""
    from luma_prefect.credentials import LOGO_URL

    logo = Path(__file__).parents[2] / "docs" / "logo.png"
    assert LOGO_URL.endswith("/main/docs/logo.png")
    header = logo.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    assert width == height and 45 < width < 1000


def test_logo_and_documentation_urls_are_accepted_by_prefect() -> None:
    """Prefect validates both as absolute http(s) URLs when the block type is saved."""
    block_type = LumaRelayCredentials._to_block_type()
    assert str(block_type.logo_url).startswith("https://")
    assert str(block_type.documentation_url).endswith("#the-lumarelaycredentials-block")


def test_code_example_shows_sync_and_async_loading() -> None:
    example = LumaRelayCredentials.get_code_example() or ""
    assert 'LumaRelayCredentials.load("BLOCK_NAME")' in example
    assert 'await LumaRelayCredentials.aload("BLOCK_NAME")' in example
    assert "await credentials.acheck()" in example
