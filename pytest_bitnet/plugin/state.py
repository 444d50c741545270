"""The plugin's state: one RunState per pytest.Config, one TestState per test.

Both live in typed stash keys (``config.stash[RUN]``, ``item.stash[TEST]``),
made when the run or the test starts and removed when it ends; nothing is
bolted onto config or items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Final

import pytest

from .settings import Settings

if TYPE_CHECKING:
    import fault_inject as fi

    from pytest_bitnet.bridge.settings import Defaults

    from .leaks import Leak

__all__ = ["RUN", "TEST", "RunState", "TestState"]


class TestState:
    """One test's bitnet state, from setup to its teardown report."""

    # A plain class with __slots__: one is made per test, and the leak
    # check's overhead must stay within a few percent of an empty test.
    __slots__ = (
        "adjust",
        "armed",
        "baseline",
        "events",
        "excluded",
        "finished",
        "leak",
        "leak_mode",
        "mark",
        "reports",
        "saved_defaults",
        "seed",
    )

    __test__ = False  # not a test class, whatever pytest's name patterns say

    def __init__(self, leak_mode: str = "strict") -> None:
        self.baseline: dict[str, int] | None = None  # counters at setup start (None: leak check off)
        self.adjust: dict[str, int] = {}  # deltas of higher-scoped fixtures, not the test's
        self.mark = 0  # the registry's mark at setup start (watched until the check)
        self.excluded: list[tuple[int, int]] = []  # (begin, end) marks of higher-scoped fixtures' setups and teardowns
        self.armed: list[fi.Armed] = []  # every arm of this test, disarmed at its end
        self.reports: list[fi.DisarmReport] = []  # filled at disarm
        self.events: list[fi.FireEvent] = []  # firings, for pytest_bitnet_fault_fired
        self.saved_defaults: Defaults | None = None  # the bridge's defaults before a bitnet_timeout marker
        self.seed: int | None = None  # this test's draws: derive_seed(run seed, node id), made on first use
        self.leak: Leak | None = None
        self.leak_mode = leak_mode  # strict | warn | off (bitnet_allow_leaks)
        self.finished = False  # finish() ran


class RunState:
    """The run-wide state of the plugin."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.seed: int | None = settings.seed  # this run's draws: settings', else the controller's, else drawn
        self.current: TestState | None = None  # the test between setup start and teardown end
        self.fixture_snapshots: dict[int, tuple[dict[str, int], int]] = {}  # id(fixturedef) -> (counters, mark) before its teardown
        self.state_dir: str | None = None  # xdist: where workers note the spec armed now
        self.unsubscribe: Callable[[], None] | None = None  # on_fire listener, when hooks want firings
        self.previous_tracking = False  # creation tracking before the run turned it on
        self.previous_defaults: Defaults | None = None  # the bridge's defaults before the run's settings
        # controller-side summary, from reports
        self.fault_rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.leaks: list[tuple[str, str, bool]] = []  # (nodeid, text, failed)
        self.crashes: list[str] = []

    @property
    def workerinput(self) -> dict[str, Any] | None:
        """xdist's data for this worker (None on the controller or without xdist)."""
        return getattr(self.config, "workerinput", None)


RUN: Final = pytest.StashKey[RunState]()
TEST: Final = pytest.StashKey[TestState]()
