"""E34-E43: the fallback tier, and saying which tier served what.

``BITNET_FORCE_LLAMA_FALLBACK=1`` sends every operation to the fallback
tier; a library lacking an optional symbol (``dlsym.<symbol>=missing``)
sends just that operation there.  Either way the session warns
(OptionalSymbolMissing), logs a WARN line and says so in ``backend_info``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from fault_inject.catalog.fallback import CORPUS
from pytest_bitnet import errors
from pytest_bitnet.bridge.diagnostics import format_text
from pytest_bitnet.plugin.fixtures import Counters


def _warn_lines(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """pytest_bitnet log lines at WARNING or above that contain every word."""
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("pytest_bitnet") and r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)]


def test_e34_forced_fallback_tokens_start_with_bos(bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters) -> None:
    entry = CATALOG["E34"]
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with bn.BitnetSession.create(bitnet_model) as s:
        with pytest.warns(entry.error_class) as caught:
            tokens = s.tokenize("hello world")
        assert s.backend_info["tokenize"].startswith("fallback:")
    entry.check(caught.pop(entry.error_class).message)
    assert len(tokens) > 1 and tokens[0] == 1  # BOS first
    assert bitnet_counters.delta() == {}


def test_e35_native_and_fallback_tokens_identical(bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters) -> None:
    with bn.BitnetSession.create(bitnet_model) as native:
        monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")  # read by create
        with bn.BitnetSession.create(bitnet_model) as fallback, warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.OptionalSymbolMissing)  # expected, not the point here
            for prompt in CORPUS:  # ASCII, unicode, whitespace, empty, special-token text, ...
                for special in (False, True):
                    np.testing.assert_array_equal(
                        native.tokenize(prompt, parse_special=special),
                        fallback.tokenize(prompt, parse_special=special),
                        err_msg=f"{prompt!r}, parse_special={special}",
                    )
            assert fallback.backend_info["tokenize"].startswith("fallback:")
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_tokenize_with_context=missing")
def test_e36_fallback_tokenize_logs_a_warning(bitnet_model: Path, caplog: pytest.LogCaptureFixture, bitnet_counters: Counters) -> None:
    entry = CATALOG["E36"]
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet")
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s:
        with pytest.warns(entry.error_class) as caught:
            s.tokenize("hello")
    entry.check(caught.pop(entry.error_class).message)
    assert _warn_lines(caplog, "bitnet_cpp_tokenize_with_context", "fallback"), caplog.text
    assert bitnet_counters.delta() == {}


def test_e37_forced_fallback_eval_gives_one_row_per_token(
    bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E37"]
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with bn.BitnetSession.create(bitnet_model) as s:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.OptionalSymbolMissing)  # tokenize's warning
            tokens = s.tokenize("one row per token")
        with pytest.warns(entry.error_class) as caught:
            logits = s.evaluate(tokens)
        assert logits.shape == (len(tokens), s.n_vocab)
    entry.check(caught.pop(entry.error_class).message)
    assert bitnet_counters.delta() == {}


def test_e38_native_and_fallback_logits_agree(bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters) -> None:
    with bn.BitnetSession.create(bitnet_model) as native:
        tokens = native.tokenize("native and fallback agree")
        want = native.evaluate(tokens)
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with bn.BitnetSession.create(bitnet_model) as fallback, warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        got = fallback.evaluate(tokens)
        assert fallback.backend_info["evaluate"].startswith("fallback:")
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)  # max abs difference <= 1e-3
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_eval_with_context=missing")
def test_e39_fallback_eval_logs_a_warning(bitnet_model: Path, caplog: pytest.LogCaptureFixture, bitnet_counters: Counters) -> None:
    entry = CATALOG["E39"]
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet")
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s:
        with pytest.warns(entry.error_class) as caught:
            s.evaluate([1, 2, 3])
    entry.check(caught.pop(entry.error_class).message)
    assert _warn_lines(caplog, "bitnet_cpp_eval_with_context", "fallback"), caplog.text
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_eval_with_context=missing")
def test_e40_no_tier_left_names_both_tiers(bitnet_model: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters) -> None:
    entry = CATALOG["E40"]
    monkeypatch.setenv("BITNET_FALLBACK", "none")
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, backend="dlopen")
    entry.check(exc.value)
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_eval_with_context=missing")
def test_e41_session_fallback_loads_the_model_once(bitnet_model: Path, bitnet_counters: Counters) -> None:
    before = bn.live_counters()["model_loads"]
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        after_create = bn.live_counters()["model_loads"]
        tokens = s.tokenize("ten calls")
        for _ in range(10):
            s.reset()
            s.evaluate(tokens)
        assert bn.live_counters()["model_loads"] == after_create  # no load per call
    assert after_create - before == 2  # the library's context and the fallback's, once each
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_tokenize_with_context=missing")
def test_e42_diagnostics_list_every_symbol_and_its_fallback(bitnet_counters: Counters) -> None:
    report = bn.diagnostics(backend="dlopen")
    assert report["mode"] == "dlopen" and report["library"].endswith(".so")
    assert {"BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_FALLBACK"} <= set(report["env"])
    symbols = {sym["name"]: sym for sym in report["symbols"]}
    assert symbols["bitnet_cpp_init_context"]["required"] and symbols["bitnet_cpp_init_context"]["status"] == "found"
    tokenize = symbols["bitnet_cpp_tokenize_with_context"]
    assert not tokenize["required"] and tokenize["status"] == "missing" and tokenize["served_by"].startswith("fallback")
    assert report["ok"], report["errors"]  # a missing optional symbol is not an error
    text = format_text(report)  # what `python -m pytest_bitnet diagnostics` prints
    assert "bitnet_cpp_tokenize_with_context" in text and "optional" in text and "missing" in text
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("dlsym.bitnet_cpp_eval_with_context=missing")
def test_e43_backend_info_names_who_served_each_operation(bitnet_model: Path, bitnet_counters: Counters) -> None:
    with bn.BitnetSession.create(bitnet_model, backend="dlopen") as s, warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        s.evaluate(s.tokenize("who served this"))
        info = s.backend_info
    assert info["create"].startswith("dlopen:") and info["tokenize"] == info["create"]
    assert info["evaluate"].startswith("fallback:") and "bitnet_cpp_eval_with_context missing" in info["evaluate"]
    assert bitnet_counters.delta() == {}
