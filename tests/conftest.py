"""Shared fixtures: zmqkit.testing's plugin, and a leak check on every test."""

import pytest

pytest_plugins = ["zmqkit.testing"]


@pytest.fixture(autouse=True)
def _no_leaked_sockets(zmqkit_leak_check: None) -> None:
    """Every test must close what it opens."""
