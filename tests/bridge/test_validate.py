"""Argument validation (pytest_bitnet.bridge.validate): what the public API
refuses before anything native runs.

Each refusal is an InvalidArgument that names the argument, what it got and
what it takes, and leaves nothing behind (no context, no worker).  The
numeric, prompt and token checks are covered beside the calls that use them
(test_session.py, test_api_fuzz.py); here are the type checks of paths and
names, through the public calls that reach them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import counters, settings
from pytest_bitnet.bridge.isolation import client


@pytest.fixture(autouse=True)
def _restore_settings() -> object:
    previous = settings.current()
    yield
    settings.restore(previous)


def _live() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in counters.LEAK_COUNTERS}


@pytest.mark.parametrize("isolation", ["none", "process"])
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda model: 42, "model_path must be a str or os.PathLike, got int"),
        (lambda model: str(model).encode(), "model_path must be a str or os.PathLike, got bytes"),
        (lambda model: f"{model}\0.bak", "contains a NUL byte"),
        (lambda model: Path(f"{model}\0.bak"), "contains a NUL byte"),
    ],
)
def test_a_model_path_that_is_no_path_is_refused_before_anything_starts(tiny_model: Path, isolation: str, make,
                                                                          fragment: str) -> None:
    before = _live()
    path = make(tiny_model)
    with pytest.raises(errors.InvalidArgument, match=fragment) as exc:
        bn.BitnetSession.create(path, isolation=isolation)
    assert exc.value.context.operation == "validate"
    if "NUL" in fragment:
        assert repr(os.fspath(path)) in str(exc.value)  # the value, quoted
    with pytest.raises(errors.InvalidArgument, match=fragment):
        bn.tokenize(path, "hello")
    assert _live() == before
    assert client.live_workers() == []


def test_a_library_path_with_a_nul_byte_is_refused(tiny_model: Path) -> None:
    before = _live()
    with pytest.raises(errors.InvalidArgument, match="contains a NUL byte"):
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path="/opt/lib\0/libbitnet.so")
    assert _live() == before


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_backend_that_is_not_a_name_is_refused(tiny_model: Path, isolation: str) -> None:
    # the name itself is checked natively (with the list of valid ones); its type here
    before = _live()
    with pytest.raises(errors.InvalidArgument, match="backend must be a str, got int"):
        bn.BitnetSession.create(tiny_model, backend=3, isolation=isolation)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="backend must be a str, got bytes"):
        bn.tokenize(tiny_model, "hello", backend=b"reference")  # type: ignore[arg-type]
    assert _live() == before
    assert client.live_workers() == []


def test_configure_refuses_names_that_are_not_str_naming_the_setting() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"backend must be a str, got int") as exc:
        settings.configure(backend=3)
    assert exc.value.context.parameters == {"backend": "3"}
    with pytest.raises(errors.InvalidArgument,
                       match=r"settings.configure\(isolation=...\) must be a str, got bool: expected one of 'none', 'process'"):
        settings.configure(isolation=True)
    assert settings.current().backend is None and settings.current().isolation is None  # nothing half applied


def test_an_isolation_that_is_not_a_name_is_refused_before_a_worker_starts(tiny_model: Path) -> None:
    before = _live()
    with pytest.raises(errors.InvalidArgument, match="isolation must be a str, got int: expected one of 'none', 'process'"):
        bn.BitnetSession.create(tiny_model, isolation=1)  # type: ignore[arg-type]
    assert _live() == before
    assert client.live_workers() == []
