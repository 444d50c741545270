"""The catalog tests cover the catalog: one test per entry, armed as the entry says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import FunctionType

import pytest

from fault_inject.catalog import CATALOG, CATEGORIES
from pytest_bitnet import errors

_TEST_NAME = re.compile(r"^test_(e\d\d)_\w+$")


def _entry_tests() -> dict[str, list[FunctionType]]:
    """Catalog id -> the test_eNN_* functions of tests/catalog that test it."""
    found: dict[str, list[FunctionType]] = {}
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for name, fn in vars(module).items():
            if isinstance(fn, FunctionType) and fn.__module__ == module.__name__ and (m := _TEST_NAME.match(name)):
                found.setdefault(m.group(1).upper(), []).append(fn)
    return found


TESTS = _entry_tests()


def _inject_marks(fn: FunctionType) -> list[pytest.Mark]:
    return [m for m in getattr(fn, "pytestmark", []) if m.name == "bitnet_inject"]


def test_catalog_holds_e01_to_e52() -> None:
    assert list(CATALOG) == [f"E{i:02d}" for i in range(1, 53)]
    assert all(entry.id == key for key, entry in CATALOG.items())


def test_every_entry_has_a_known_category_and_error_class() -> None:
    for entry in CATALOG.values():
        assert entry.category in CATEGORIES, entry.id
        if entry.expect is not None:
            assert isinstance(getattr(errors, entry.expect, None), type), f"{entry.id}: {entry.expect} is not in pytest_bitnet.errors"
            assert issubclass(entry.error_class, (errors.BitnetError, Warning)), entry.id
        assert entry.operation, f"{entry.id}: its scenario has no docstring"


def test_every_entry_has_exactly_one_test() -> None:
    assert sorted(TESTS) == sorted(CATALOG), f"missing: {sorted(set(CATALOG) - set(TESTS))}, unknown: {sorted(set(TESTS) - set(CATALOG))}"
    several = {eid: [fn.__name__ for fn in fns] for eid, fns in TESTS.items() if len(fns) != 1}
    assert not several, several


@pytest.mark.parametrize("eid", [e.id for e in CATALOG.values() if e.inject and not e.arm_in_scenario])
def test_whole_run_specs_are_armed_by_the_marker(eid: str) -> None:
    (fn,) = TESTS[eid]
    assert [m.args for m in _inject_marks(fn)] == [(CATALOG[eid].inject,)], f"{fn.__name__} needs @pytest.mark.bitnet_inject({CATALOG[eid].inject!r})"


@pytest.mark.parametrize("eid", [e.id for e in CATALOG.values() if e.inject and e.arm_in_scenario])
def test_one_call_specs_are_armed_by_the_fixture(eid: str) -> None:
    (fn,) = TESTS[eid]
    assert not _inject_marks(fn), f"{fn.__name__}: {eid} arms its spec around one call, not for the whole test"
    assert "bitnet_inject" in inspect.signature(fn).parameters
    assert f'bitnet_inject("{CATALOG[eid].inject}")' in inspect.getsource(fn)


def test_entries_without_a_spec_have_no_marker() -> None:
    marked = [fns[0].__name__ for eid, fns in TESTS.items() if not CATALOG[eid].inject and _inject_marks(fns[0])]
    assert not marked


def test_no_reason_cites_a_file_an_install_lacks() -> None:
    # The matrix runs from an installed package: its n/a reasons must not
    # send a user to tests/... of the source tree (issue 20.14).
    for entry in CATALOG.values():
        for backend, reason in entry.not_for.items():
            assert "tests/" not in reason and ".py" not in reason, f"{entry.id} [{backend}]: {reason}"
