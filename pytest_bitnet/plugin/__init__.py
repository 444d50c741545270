"""The bitnet pytest plugin: fault injection, leak assertion, timeouts, reports.

Registered as the ``bitnet`` pytest11 entry point (``-p no:bitnet`` turns it
off).  Thin glue, and this module only wires pytest's hooks to the modules
that do the work:

``settings``   options, ini keys, markers, validation, precedence
``state``      the run's and each test's state (stash keys)
``faults``     per-test arming: run-wide spec, markers, the timeout marker
``leaks``      the leak check, crediting higher-scoped fixtures
``reports``    header, teardown reports, terminal summary, JUnit properties
``fixtures``   bitnet_inject, bitnet_model, bitnet_session, bitnet_counters
``xdist``      seed and state to workers, crashes named
``interpose``  --bitnet-interpose: the interposing libllama, enabled before conftests
``deadlines``  the one-time warning for a library whose calls no timeout can stop
``hookspecs``  the hooks the plugin calls (for conftest.py files)
``matrix``     the error-path matrix as pytest items (``-p pytest_bitnet.matrix``)

Arming is :mod:`fault_inject`'s, counters and sessions are
:mod:`pytest_bitnet.bridge`'s.  The native library is imported only when a
setting or a test needs it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from . import deadlines, faults, interpose, leaks, reports, settings, xdist
from .deadlines import BitnetUnboundedCallsWarning
from .fixtures import bitnet_counters, bitnet_inject, bitnet_model, bitnet_session
from .state import RUN, TEST, RunState, TestState
from .xdist import pytest_configure_node, pytest_handlecrashitem

__all__ = [
    "BitnetUnboundedCallsWarning",
    "bitnet_counters",
    "bitnet_inject",
    "bitnet_model",
    "bitnet_session",
    "pytest_configure_node",
    "pytest_handlecrashitem",
]


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    settings.add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # The earliest hook after the command line is known: before pytest (a
    # trylast implementation) imports conftest.py files, which may import
    # llama_cpp and so load libllama (see interpose's docstring).
    if early_config.known_args_namespace.help or early_config.known_args_namespace.version:
        return  # --help works whatever the interposition would say
    interpose.enable(early_config)


def pytest_configure(config: pytest.Config) -> None:
    for text in settings.MARKERS.values():
        config.addinivalue_line("markers", text)
    # Before resolve(): its spec validation must see the interposed points
    # (registered when the interposer attaches).  A no-op when the early
    # hook did it; needed when the plugin was registered too late for it.
    if not (config.option.help or config.option.version):
        interpose.enable(config)
    run = RunState(config, settings.resolve(config))
    config.stash[RUN] = run
    xdist.configure(run)
    if run.seed is None:
        import secrets

        run.seed = secrets.randbelow(2**32)
    s = run.settings
    if s.backend is not None or s.timeout is not None or s.isolation is not None:
        from pytest_bitnet.bridge import settings as bridge_settings

        changes: dict[str, Any] = {}
        if s.backend is not None:
            changes["backend"] = s.backend
        if s.isolation is not None:
            changes["isolation"] = s.isolation
        if s.timeout is not None:
            changes["timeout"] = s.timeout
        run.previous_defaults = bridge_settings.configure(**changes)
    interpose.sync_timeout(config)
    faults.configure(run)
    leaks.configure(run)
    deadlines.configure(config)
    config.pluginmanager.register(reports.Collector(run), "bitnet-run")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None:
        return
    if run.unsubscribe is not None:
        run.unsubscribe()
    leaks.unconfigure(run)
    deadlines.unconfigure(config)
    if run.previous_defaults is not None:
        from pytest_bitnet.bridge import settings as bridge_settings

        bridge_settings.restore(run.previous_defaults)
        interpose.sync_timeout(config)
    xdist.unconfigure(run)
    plugin = config.pluginmanager.get_plugin("bitnet-run")
    if plugin is not None:
        config.pluginmanager.unregister(plugin)
    del config.stash[RUN]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return reports.header(config.stash[RUN])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    try:
        return (yield)
    finally:
        # Safety net (an interrupted test): nothing armed outlives its test.
        _finish(item)
        if TEST in item.stash:
            del item.stash[TEST]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Not a wrapper: an error here (a bad marker) must not stop other
    # plugins' setup wrappers from running.  tryfirst: before any fixture.
    run = item.config.stash[RUN]
    st = TestState(leak_mode=run.settings.leak_check)
    item.stash[TEST] = st
    run.current = st
    deadlines.start(item)
    try:
        faults.start(run, item, st)
    except pytest.UsageError as exc:
        refused = str(exc)
    else:
        refused = None
    if refused is not None:
        # Outside the except block: failing inside it chains the UsageError
        # ("During handling of the above exception ..."), printing it twice.
        pytest.fail(refused, pytrace=False)
    leaks.start(run, st)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        # sessions the test (or its fixtures' setup) created, warned of as its own
        deadlines.warn_pending(item)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        # After every fixture's teardown (function scope, and higher scopes
        # ending here): the leak check sees only what outlived the test.
        try:
            _finish(item)
        finally:
            deadlines.warn_pending(item, ended=True)


def _finish(item: pytest.Item) -> None:
    """After teardown: disarm, restore, check leaks.  Idempotent."""
    st = item.stash.get(TEST, None)
    if st is None or st.finished:
        return
    st.finished = True
    run = item.config.stash[RUN]
    run.current = None
    faults.finish(run, item, st)
    leaks.check(run, item, st)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    st = item.stash.get(TEST, None)
    if st is None:
        return report
    if call.when == "teardown":
        reports.decorate(st, report, item.config.stash[RUN].seed)
    elif report.failed:
        # shown with the failure: what reruns this one test with the same draws
        again = faults.reproduce(item.config.stash[RUN], item, st)
        if again:
            report.sections.append(("bitnet fault injection", again))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[Any]:
    # Objects made by session/module/class fixtures belong to no test.
    if fixturedef.scope == "function":
        return (yield)
    with leaks.crediting(fixturedef, request):
        return (yield)


def pytest_fixture_post_finalizer(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> None:
    if fixturedef.scope != "function":
        leaks.fixture_torn_down(fixturedef, request)
