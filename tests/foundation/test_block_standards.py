"""LumaRelayCredentials meets Prefect's standards for collection blocks (as prefect-email does)."""

from __future__ import annotations

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
