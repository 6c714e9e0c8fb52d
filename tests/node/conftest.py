"""Fixtures for the node tests (helpers live in nodesupport.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from node.nodesupport import MakeNode, node_factory


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    """Build node apps served on 127.0.0.1; all are closed after the test."""
    async for make in node_factory():
        yield make
