"""E01-E08: finding and loading the backend library, and its symbols.

These drive the bridge's loader (``backend="dlopen"``).  With
BITNET_CPP_LIBDIR / BITNET_CPP_DIR unset (see conftest.py) discovery finds
the library bundled with the package; E05 and E08 also load real libraries
compiled for the purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from pytest_bitnet.bridge.abi import lib
from pytest_bitnet.plugin.fixtures import Counters
from tests.native_builds import build_library


@pytest.fixture(scope="module")
def library_without_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real libbitnet.so whose dynamic symbol table lacks bitnet_cpp_init_context (and
    bitnet_cpp_session_create: with the whole of Socket 4 it would be served through that)."""
    return build_library(tmp_path_factory.mktemp("no_init"), hide=["bitnet_cpp_init_context", "bitnet_cpp_session_create"])


def _assert_same_as_reference(model: Path, tokens: np.ndarray, logits: np.ndarray) -> None:
    """The fallback tier must give what the reference backend gives."""
    with bn.BitnetSession.create(model, backend="reference") as ref:
        want_tokens = ref.tokenize("hello world")
        want_logits = ref.evaluate(want_tokens)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(logits, want_logits, atol=1e-3, rtol=0)


def test_e01_stub_mode_says_how_to_enable_a_backend(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E01"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="stub")
    entry.check(exc.value)
    with pytest.raises(entry.error_class) as exc:
        bn.tokenize(bitnet_model, "x", backend="stub")
    entry.check(exc.value)
    with pytest.raises(entry.error_class) as exc:
        bn.evaluate(bitnet_model, [1, 2], backend="stub")
    entry.check(exc.value)
    assert bitnet_counters.delta() == {}


def test_e02_empty_library_dir_names_every_path_searched(
    bitnet_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E02"]
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(tmp_path))
    monkeypatch.setenv("BITNET_CPP_DIR", str(tmp_path / "checkout"))
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen")
    entry.check(exc.value, values={"tmp": tmp_path})
    assert "_libbitnet" not in str(exc.value)  # explicit configuration: no silent use of the bundled library
    assert bitnet_counters.delta() == {}


def test_e03_unloadable_library_carries_the_loader_message(
    bitnet_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E03"]
    (tmp_path / "libbitnet.so").write_bytes(b"this is not an ELF file\n" * 10)
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(tmp_path))
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen")
    entry.check(exc.value, values={"tmp": tmp_path})
    assert "invalid ELF header" in str(exc.value) or "file too short" in str(exc.value)  # the dynamic loader's reason
    assert bitnet_counters.delta() == {}


def test_e04_no_native_tier_and_no_fallback(bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters) -> None:
    entry = CATALOG["E04"]
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")  # the native tier is not used...
    monkeypatch.setenv("BITNET_FALLBACK", "none")  # ...and the fallback tier is disabled
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen")
    entry.check(exc.value)
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_init_context=missing;dlsym.bitnet_cpp_session_create=missing")
def test_e05_required_symbol_missing(bitnet_model: Path, library_without_init: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E05"]
    # The bundled library, its symbol hidden by the fault point.
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen")
    entry.check(exc.value)
    assert ".so" in str(exc.value)  # names the library
    # A real library built without the symbol (it lacks it whatever is armed).
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen", library_path=library_without_init)
    entry.check(exc.value)
    assert str(library_without_init) in str(exc.value)
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_tokenize_with_context=missing")
def test_e06_optional_tokenize_symbol_missing_is_served_by_fallback(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E06"]
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s:
        with pytest.warns(entry.error_class) as caught:
            tokens = s.tokenize("hello world")
        logits = s.evaluate(tokens)
        served = s.backend_info["tokenize"]
    entry.check(caught.pop(entry.error_class).message)
    assert served.startswith("fallback:") and "bitnet_cpp_tokenize_with_context" in served
    _assert_same_as_reference(bitnet_model, tokens, logits)
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_eval_with_context=missing")
def test_e07_optional_eval_symbol_missing_is_served_by_fallback(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E07"]
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s:
        tokens = s.tokenize("hello world")
        with pytest.warns(entry.error_class) as caught:
            logits = s.evaluate(tokens)
        served = s.backend_info["evaluate"]
    entry.check(caught.pop(entry.error_class).message)
    assert served.startswith("fallback:") and "bitnet_cpp_eval_with_context" in served
    _assert_same_as_reference(bitnet_model, tokens, logits)
    assert bitnet_counters.delta() == {}


def test_e08_incompatible_abi_version(bitnet_model: Path, library_abi99: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E08"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen", library_path=library_abi99)
    entry.check(exc.value, values={"found": 99, "expected": lib.BITNET_ABI_VERSION})
    assert bitnet_counters.delta() == {}
