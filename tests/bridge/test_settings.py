"""Defaults: the environment read in one place, configure() for a harness."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet.bridge import errors, settings


@pytest.fixture(autouse=True)
def _restore() -> object:
    previous = settings.current()
    yield
    settings.restore(previous)


def test_configure_sets_defaults_without_touching_the_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_CPP_TIMEOUT", raising=False)
    monkeypatch.delenv("BITNET_BACKEND", raising=False)
    before = dict(os.environ)
    settings.configure(backend="stub", timeout="none")
    assert dict(os.environ) == before
    assert settings.default_timeout() == math.inf
    with pytest.raises(errors.CppNotAvailable):
        bn.BitnetSession.create(tiny_model)  # the configured backend travels as an option
    with bn.BitnetSession.create(tiny_model, backend="reference") as s:  # the call's argument wins
        assert s.timeout == math.inf


def test_precedence_configure_over_environment_over_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BITNET_CPP_TIMEOUT", raising=False)
    assert settings.default_timeout() == settings.DEFAULT_TIMEOUT
    monkeypatch.setenv("BITNET_CPP_TIMEOUT", "2.5")
    assert settings.default_timeout() == 2.5
    previous = settings.configure(timeout=0.5)
    assert settings.default_timeout() == 0.5
    settings.restore(previous)
    assert settings.default_timeout() == 2.5


def test_bad_values_name_their_source() -> None:
    with pytest.raises(errors.InvalidArgument, match="invalid timeout 'soon' from settings.configure"):
        settings.configure(timeout="soon")
    with pytest.raises(errors.InvalidArgument, match="invalid backend 'gpu'"):
        settings.configure(backend="gpu")


def test_zero_is_a_deadline_already_past_everywhere(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_CPP_TIMEOUT", "0")
    assert settings.default_timeout() == 0
    with pytest.raises(errors.OperationTimeout):
        bn.tokenize(tiny_model, "x")
    monkeypatch.delenv("BITNET_CPP_TIMEOUT")
    settings.configure(timeout=0)
    with pytest.raises(errors.OperationTimeout):
        bn.tokenize(tiny_model, "x")
