"""Fixtures shared by the catalog tests.

Every test here starts from a clean backend environment (the loader entries
rely on discovery finding the bundled library), and the real libraries some
entries load are compiled once per run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.native_builds import build_library

#: Variables that choose or redirect the backend; each test sets what it needs.
BACKEND_ENV = ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK")


@pytest.fixture(autouse=True)
def _clean_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BACKEND_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def library_abi99(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real libbitnet.so, complete but reporting ABI version 99 (E08, E32)."""
    return build_library(tmp_path_factory.mktemp("abi99"), defines=["BITNET_ABI_VERSION=99"])
