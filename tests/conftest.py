"""Shared fixtures: test models built once per run.

The leak check is the bitnet plugin's own (on by default, see pytest_bitnet.plugin).

Models are written by pytest_bitnet.testing.models into the directory of the
plugin's own ``bitnet_model`` (one per run and xdist worker, or
BITNET_MODEL_CACHE): names hash the parameters, so a model is written once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import pytest_bitnet as bn


@pytest.fixture(autouse=True)
def _inner_runs_render_as_on_a_terminal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest prints whole messages in the short test summary when it sees
    # CI or BUILD_NUMBER (a CI service sets them) and cuts them to the
    # terminal's width otherwise.  Tests that count what an inner pytester
    # run printed must not depend on where the outer run happens to be.
    if "pytester" in request.fixturenames:
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.delenv("BUILD_NUMBER", raising=False)


@pytest.fixture(scope="session")
def model_dir(bitnet_model: Path) -> Path:
    return bitnet_model.parent


@pytest.fixture(scope="session")
def make_model(model_dir: Path) -> Callable[..., Path]:
    """make_model(**params) -> path of a cached tiny model."""

    def make(**params: Any) -> Path:
        return bn.models.cached_tiny_model(model_dir, **params)

    return make


@pytest.fixture(scope="session")
def tiny_model(bitnet_model: Path) -> Path:
    """The default tiny bitnet model (TQ2_0 projections, 512 tokens): the plugin's bitnet_model."""
    return bitnet_model


# ---- stress / soak (tests/bridge/test_stress.py) --------------------------------------

SOAK_ENV = "BITNET_SOAK_SECONDS"


def _coverage_context(name: str) -> None:
    """Under .ci/coverage (coverage.py started by its sitecustomize), the
    coverage context is the running test, so the report can name a test
    that reached each Python error site.  Nothing otherwise."""
    coverage = sys.modules.get("coverage")
    cov = coverage.Coverage.current() if coverage is not None else None
    if cov is not None:
        cov.switch_context(name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _coverage_context(item.nodeid)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    _coverage_context("")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bitnet-soak",
        metavar="SECONDS",
        type=float,
        default=None,
        help=f"run the stress soak (tests/bridge/test_stress.py) for SECONDS; also env {SOAK_ENV}. Off by default.",
    )


@pytest.fixture(scope="session")
def soak_seconds(request: pytest.FixtureRequest) -> float | None:
    """Seconds of soak asked for (--bitnet-soak, else BITNET_SOAK_SECONDS), or None."""
    value = request.config.getoption("--bitnet-soak")
    if value is None:
        raw = os.environ.get(SOAK_ENV, "").strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise pytest.UsageError(f"{SOAK_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise pytest.UsageError(f"soak length must be > 0 seconds, got {value}")
    return float(value)
