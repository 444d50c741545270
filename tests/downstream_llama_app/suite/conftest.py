"""The app's own test configuration: nothing of pytest-bitnet but its fixtures and markers."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interposed: arms llama_* points (needs pytest --bitnet-interpose=llama)")
