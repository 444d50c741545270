"""The error taxonomy: classes keyed by the native table, and hints that put
the Python API's words into native messages."""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet.bridge import errors


def test_every_native_code_has_the_class_the_table_names() -> None:
    from pytest_bitnet.bridge.abi import ffi, lib

    info = ffi.new("bitnet_error_info_t *")
    for i in range(lib.bitnet_bridge_error_count()):
        lib.bitnet_bridge_error_info(i, info)
        assert errors.error_for_code(info.code).__name__ == ffi.string(info.class_name).decode()
    assert errors.error_for_code(-9999) is errors.InternalError


def test_hints_replace_c_api_names_and_keep_the_native_text(tiny_model: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s:
        with pytest.raises(errors.OperationTimeout) as info:
            s.evaluate([1, 2], timeout=0)
    assert "raise the timeout (timeout=..., BITNET_CPP_TIMEOUT)" in str(info.value)
    assert "bitnet_bridge_set_call_timeout" not in str(info.value)
    assert "bitnet_bridge_set_call_timeout" in (info.value.context.native_message or "")


def test_a_layer_above_registers_its_own_hint(tiny_model: Path) -> None:
    import fault_inject as fi

    with bn.BitnetSession.create(tiny_model) as s, fi.inject("tokenize.query=fail"):
        with pytest.raises(errors.InferenceError, match=r"fault_inject\.disarm_all\(\), or unset BITNET_INJECT"):
            s.tokenize("x")


def test_add_hint_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        errors.add_hint("x")
    with pytest.raises(ValueError, match="exactly one of"):
        errors.add_hint("x", replace="y", append="z")
    assert errors.apply_hints("nothing to change here") == "nothing to change here"
