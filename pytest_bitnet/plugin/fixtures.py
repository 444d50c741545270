"""The plugin's fixtures: bitnet_inject, bitnet_model, bitnet_session, bitnet_counters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Iterator

import pytest

from pytest_bitnet.bridge.counters import LEAK_COUNTERS

from . import faults
from .state import RUN, TEST, RunState, TestState

if TYPE_CHECKING:
    import fault_inject as fi

    from pytest_bitnet.bridge.session import BitnetSession

__all__ = ["Counters", "Injector", "bitnet_counters", "bitnet_inject", "bitnet_model", "bitnet_session"]


class Injector:
    """What the ``bitnet_inject`` fixture returns: arm specs inside a test.

    ``bitnet_inject(spec, thread=False, seed=None)`` arms and returns the
    :class:`fault_inject.Armed` handle (also usable as ``with``); whatever is
    still armed when the test ends is disarmed then, whatever its outcome.
    It is the narrowest scope: it arms over the run-wide spec, the markers
    and earlier calls, taking the points it names (they go back when it is
    disarmed) and leaving them the rest.  seed=None: the test's own seed.
    """

    __slots__ = ("_item", "_run", "_state")

    def __init__(self, run: RunState, item: pytest.Item, state: TestState) -> None:
        self._run, self._item, self._state = run, item, state

    def __call__(self, spec: str, *, thread: bool = False, seed: int | None = None) -> fi.Armed:
        return faults.arm(self._run, self._state, self._item, spec, seed=seed, thread=thread, source=faults.FIXTURE)

    @property
    def armed(self) -> tuple[fi.Armed, ...]:
        """Every handle armed in this test (by the fixture, a marker or --bitnet-inject)."""
        return tuple(self._state.armed)

    def hits(self, point: str | None = None) -> Any:
        """Hits of one point (int) or of every armed point (dict), over this test's arms."""
        return self._count("hits", point)

    def fired(self, point: str | None = None) -> Any:
        """Firings of one point (int) or of every armed point (dict)."""
        return self._count("fired", point)

    def _count(self, which: str, point: str | None) -> Any:
        if point is None:
            return {p: n for a in self._state.armed for p, n in getattr(a, which)().items()}
        for a in reversed(self._state.armed):
            if point in a.points:
                return getattr(a, which)(point)
        armed = ", ".join(p for a in self._state.armed for p in a.points) or "nothing"
        raise LookupError(f"{point!r} is not armed in this test; armed: {armed}")


class Counters:
    """What the ``bitnet_counters`` fixture returns: the native live counters."""

    __slots__ = ("baseline",)

    def __init__(self) -> None:
        self.baseline = self.current()  # when the fixture was set up

    @staticmethod
    def current() -> dict[str, int]:
        """pytest_bitnet.live_counters() now."""
        from pytest_bitnet.bridge.counters import live_counters

        return live_counters()

    def delta(self) -> dict[str, int]:
        """Leak-checked counters that differ from the baseline (current - baseline)."""
        from pytest_bitnet.bridge.counters import delta

        return delta(self.baseline, self.current(), LEAK_COUNTERS)


def _state_of(request: pytest.FixtureRequest) -> TestState:
    st = request.node.stash.get(TEST, None)
    if st is None:  # only if setup hooks did not run (another plugin skipped them)
        st = request.node.stash[TEST] = TestState()
    return st


@pytest.fixture
def bitnet_inject(request: pytest.FixtureRequest) -> Injector:
    """Arm fault specs inside a test: ``armed = bitnet_inject("eval.fill=fail")``; read ``.hits(point)``."""
    return Injector(request.config.stash[RUN], request.node, _state_of(request))


#: directory where bitnet_model keeps its models across runs (default: the run's temporary directory)
MODEL_CACHE_ENV: Final = "BITNET_MODEL_CACHE"


@pytest.fixture(scope="session")
def bitnet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a cached tiny bitnet GGUF model (built once per run and worker,
    or once per ``BITNET_MODEL_CACHE`` directory when that is set)."""
    from pytest_bitnet.testing.models import cached_tiny_model

    cache = os.environ.get(MODEL_CACHE_ENV, "").strip()
    where = Path(cache) if cache else tmp_path_factory.mktemp("bitnet-models")
    return cached_tiny_model(where, arch="bitnet", seed=0)


@pytest.fixture
def bitnet_session(bitnet_model: Path) -> Iterator[BitnetSession]:
    """An open BitnetSession on ``bitnet_model``, closed at teardown."""
    from pytest_bitnet.bridge.session import BitnetSession

    with BitnetSession.create(bitnet_model) as session:
        yield session


@pytest.fixture
def bitnet_counters() -> Counters:
    """Native live counters: ``.baseline``, ``.current()``, ``.delta()``."""
    return Counters()
