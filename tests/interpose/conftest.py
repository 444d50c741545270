"""Interposition on the real thing: llama-cpp-python, unmodified, under pytest-bitnet.

Everything that needs the interposing libllama runs in a child process
(pytester's runpytest_subprocess, or tests/interpose/sweep_driver.py):
llama-cpp-python binds its library once, at import, and other tests of this
run import it from the real library (tests/native/test_detokenize.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "downstream_llama_app"


@pytest.fixture
def llama_app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> pytest.Pytester:
    """A pytester directory holding the example app (chatbot.py) and its suite."""
    pytest.importorskip("llama_cpp", reason="the example app needs llama-cpp-python: pip install -e '.[llama]'")
    shutil.copy(APP / "chatbot.py", pytester.path / "chatbot.py")
    for f in (APP / "suite").glob("*.py"):
        shutil.copy(f, pytester.path / f.name)
    # Inner runs reuse this run's models and skip plugins they do not need
    # (as tests/plugin/conftest.py does; faulthandler: see there).
    monkeypatch.setenv("BITNET_MODEL_CACHE", str(model_dir))
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:benchmark -p no:cacheprovider -p no:faulthandler")
    # the user's environment, not ours: llama-cpp-python finds its own lib/
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.delenv("BITNET_INTERPOSE", raising=False)
    monkeypatch.delenv("BITNET_INJECT", raising=False)
    return pytester
