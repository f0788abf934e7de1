"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest
from flower_helpers import task_identity


@pytest.fixture
def flower_identity():
    """Flower's ``Message`` constructor needs the ServerApp's task identity."""
    with task_identity():
        yield
