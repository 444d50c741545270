"""An app's own ctypes binding, loading libllama by path, under pytest-bitnet:
its suite's conftest.py points the binding at
``fault_inject.interpose.library_for(real)`` and gets the llama_* points,
the counters and the leak check, with no other change (tests/downstream_ctypes_app)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "downstream_ctypes_app"


def test_a_ctypes_binding_gets_points_counters_and_the_leak_check(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the binding borrows llama-cpp-python's struct layouts: pip install -e '.[llama]'")
    shutil.copy(APP / "binding.py", pytester.path / "binding.py")
    for f in (APP / "suite").glob("*.py"):
        shutil.copy(f, pytester.path / f.name)
    monkeypatch.setenv("BITNET_MODEL_CACHE", str(model_dir))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:benchmark -p no:cacheprovider -p no:faulthandler")
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.delenv("BITNET_INTERPOSE", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    # every test passes; the parked model fails the leak check, naming the line that made it
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_parks_a_model*",
            "*leaked by test_binding.py::test_parks_a_model: llama_models +1*",
            '  File "*test_binding.py", line *, in test_parks_a_model',
            "    PARKED.append(binding.Model(str(bitnet_model)))  # never closed",
        ]
    )
    out = result.stdout.str()
    for name in ("test_tokenize", "test_load_failure", "test_tokenize_retry"):
        assert f"leaked by test_binding.py::{name}" not in out, name
