"""The plugin's tests run real pytest sessions with pytester (loaded by the
repository's conftest.py)."""

from __future__ import annotations

import pytest

# Imported here, before any in-process pytester run: such a run drops the
# modules first imported inside it from sys.modules, but not the attribute
# the package keeps, so the next run's plugin (`from pytest_bitnet.bridge import
# settings`) and its test files (`from pytest_bitnet.bridge.settings import
# ...`) would see two copies of the bridge's defaults.  Which outer test
# imported it first used to decide whether test_options passed alone.
import pytest_bitnet.bridge.settings  # noqa: F401


@pytest.fixture(autouse=True)
def _share_models(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, model_dir: object) -> None:
    # Inner runs (in-process and subprocess) reuse this run's models
    # instead of each writing its own, and skip plugins they do not need
    # (hypothesis' terminal summary alone costs ~1 s per run).  After
    # pytester, which clears PYTEST_ADDOPTS when it is set up.
    # faulthandler: an in-process run re-enables it on its captured stderr
    # when it ends, which silences crash reports of later tests (forked
    # sweeps read "Fatal Python error" from their children's stderr).
    monkeypatch.setenv("BITNET_MODEL_CACHE", str(model_dir))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:benchmark -p no:cacheprovider -p no:faulthandler")
