"""The X-macro tables of native/include (*.def): one place for each fact.

The C code, the cffi module and the enumerators of bitnet_bridge.h
(bitnet_bridge_error_info, _symbol_info, _backend_info) must all say what
the tables say; the build reads the tables with one reader (_build.read_def).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_bitnet.bridge.abi import ffi, lib

from ..native_builds import LOADER_SYMBOLS, SOCKET_SYMBOLS, _build_module

INCLUDE = Path(__file__).resolve().parents[2] / "native" / "include"
build = _build_module()


def _errors() -> list:
    out = ffi.new("bitnet_error_info_t *")
    rows = []
    for i in range(lib.bitnet_bridge_error_count()):
        assert lib.bitnet_bridge_error_info(i, out) == lib.BITNET_OK
        rows.append((out.code, ffi.string(out.name).decode(), ffi.string(out.class_name).decode(), ffi.string(out.message).decode()))
    return rows


def _symbols() -> list:
    out = ffi.new("bitnet_symbol_info_t *")
    rows = []
    for i in range(lib.bitnet_bridge_symbol_count()):
        assert lib.bitnet_bridge_symbol_info(i, out) == lib.BITNET_OK
        rows.append((ffi.string(out.name).decode(), out.socket, out.need, out.required, out.point))
    return rows


def _point_name(index: int) -> str:
    p = ffi.new("bitnet_fault_point_t *")
    assert lib.bitnet_fault_point_info(index, p) == lib.BITNET_OK
    return ffi.string(p.name).decode()


def test_error_table_is_the_compiled_enum() -> None:
    table = build.read_def(INCLUDE / "bitnet_errors.def", "BITNET_ERROR")
    assert [(code, name, cls, msg) for name, code, cls, msg in (e.args for e in table)] == _errors()
    for code, name, _cls, _msg in _errors():
        assert getattr(lib, name) == code  # cffi took the value from the compiled C
    # codes run -1, -2, ... without a gap, and BITNET_E_MIN is the last
    assert [row[0] for row in _errors()] == list(range(-1, lib.BITNET_E_MIN - 1, -1))
    assert {n for n in dir(lib) if n.startswith("BITNET_E_")} == {row[1] for row in _errors()} | {"BITNET_E_MIN"}


def test_error_table_classes() -> None:
    classes = {code: cls for code, _name, cls, _msg in _errors()}
    assert classes[lib.BITNET_E_MODEL_NOT_FOUND] == classes[lib.BITNET_E_MODEL_LOAD] == "ModelLoadError"
    assert classes[lib.BITNET_E_OOM] == "OutOfMemory" and classes[lib.BITNET_E_ABI_MISMATCH] == "AbiMismatch"
    assert all(cls and cls[0].isupper() for cls in classes.values())


def test_symbol_table_gives_every_resolved_symbol_its_dlsym_point() -> None:
    rows = _symbols()
    assert tuple(r[0] for r in rows) == SOCKET_SYMBOLS
    for name, socket, need, required, point in rows:
        assert 0 <= socket <= 6
        assert required == (need == lib.BITNET_SYMBOL_REQUIRED)
        if need == lib.BITNET_SYMBOL_EXPORTED:
            assert point == -1 and name not in LOADER_SYMBOLS
        else:
            assert _point_name(point) == f"dlsym.{name}" and name in LOADER_SYMBOLS
    dlsym_points = {_point_name(i) for i in range(lib.bitnet_fault_point_count()) if _point_name(i).startswith("dlsym.")}
    assert dlsym_points == {f"dlsym.{s}" for s in LOADER_SYMBOLS}  # no point without its symbol
    need = {name: need for name, _s, need, _r, _p in rows}
    assert need["bitnet_cpp_init_context"] == need["bitnet_cpp_free_context"] == lib.BITNET_SYMBOL_REQUIRED
    assert need["bitnet_cpp_tokenize_with_context"] == need["crossval_bitnet_eval_with_tokens"] == lib.BITNET_SYMBOL_FALLBACK


def test_symbol_table_matches_the_discovery_report() -> None:
    from pytest_bitnet.bridge.diagnostics import diagnostics

    report = diagnostics(backend="dlopen")
    assert [s["name"] for s in report["symbols"]] == list(LOADER_SYMBOLS)
    required = {name for name, _s, _n, req, _p in _symbols() if req}
    assert {s["name"] for s in report["symbols"] if s["required"]} == required


def test_backend_table() -> None:
    out = ffi.new("bitnet_backend_info_t *")
    names = []
    for i in range(lib.bitnet_bridge_backend_count()):
        assert lib.bitnet_bridge_backend_info(i, out) == lib.BITNET_OK
        names.append(ffi.string(out.name).decode())
        assert len(ffi.string(out.description)) > 20
    assert names == ["reference", "dlopen", "llama", "stub"]
    assert names == [e.args[1] for e in build.read_def(INCLUDE / "bitnet_backends.def", "BITNET_BACKEND")]


@pytest.mark.parametrize(
    ("count", "info", "struct"),
    [
        (lib.bitnet_bridge_error_count, lib.bitnet_bridge_error_info, "bitnet_error_info_t *"),
        (lib.bitnet_bridge_symbol_count, lib.bitnet_bridge_symbol_info, "bitnet_symbol_info_t *"),
        (lib.bitnet_bridge_backend_count, lib.bitnet_bridge_backend_info, "bitnet_backend_info_t *"),
    ],
)
def test_enumerators_refuse_bad_arguments(count, info, struct) -> None:  # type: ignore[no-untyped-def]
    out = ffi.new(struct)
    assert info(-1, out) == lib.BITNET_E_INVALID_ARG
    assert info(count(), out) == lib.BITNET_E_INVALID_ARG
    assert info(0, ffi.NULL) == lib.BITNET_E_INVALID_ARG


def test_fault_limits_come_from_the_library() -> None:
    assert lib.BITNET_FAULT_MAX_DELAY_MS == 3_600_000
    assert lib.BITNET_FAULT_MAX_GROW == 1 << 20
    assert lib.BITNET_FAULT_MAX_COUNT == 2**32 - 1
    assert (lib.BITNET_FAULT_MAX_TERMS, lib.BITNET_FAULT_MAX_NAME) == (16, 128)

    def arm(action: int, arg: int, count: int = 0) -> int:
        terms = ffi.new("bitnet_fault_term_t[]", 1)
        terms[0].probability, terms[0].count, terms[0].action, terms[0].arg = 1.0, count, action, arg
        rc = lib.bitnet_fault_arm(b"eval.fill", terms, 1, 0, 0, ffi.NULL, ffi.NULL, 0)
        if rc == lib.BITNET_OK:
            lib.bitnet_fault_disarm(b"eval.fill", ffi.NULL, ffi.NULL, 0)
        return rc

    if not lib.bitnet_fault_compiled_in():
        pytest.skip("fault injection is compiled out")
    assert arm(lib.BITNET_FAULT_DELAY, lib.BITNET_FAULT_MAX_DELAY_MS) == lib.BITNET_OK
    assert arm(lib.BITNET_FAULT_DELAY, lib.BITNET_FAULT_MAX_DELAY_MS + 1) == lib.BITNET_E_INVALID_ARG
    assert arm(lib.BITNET_FAULT_GROW, lib.BITNET_FAULT_MAX_GROW) == lib.BITNET_OK
    assert arm(lib.BITNET_FAULT_GROW, lib.BITNET_FAULT_MAX_GROW + 1) == lib.BITNET_E_INVALID_ARG
    assert arm(lib.BITNET_FAULT_OFF, 0, lib.BITNET_FAULT_MAX_COUNT) == lib.BITNET_OK
    assert arm(lib.BITNET_FAULT_OFF, 0, lib.BITNET_FAULT_MAX_COUNT + 1) == lib.BITNET_E_INVALID_ARG


# ---- the reader the build uses ----------------------------------------------------------------------


def test_read_def_parses_entries(tmp_path: Path) -> None:
    table = tmp_path / "t.def"
    table.write_text(
        "/* a table: T(ID, N, \"text\") */\n"
        "#ifndef U\n#define U(x)\n#endif\n"
        "T(A, -1, \"one \" \"line\") // trailing\n"
        "T(B, 2,\n  \"with, a comma\")\n"
        "U(C)\n"
        "T(D, BN_FA(X) | 3, \"q\\\"uote\")\n"
    )
    entries = build.read_def(table, "T")
    assert [e.args for e in entries] == [("A", -1, "one line"), ("B", 2, "with, a comma"), ("D", "BN_FA(X) | 3", 'q"uote')]
    assert entries[2].raw[1] == "BN_FA(X) | 3"
    assert [e.macro for e in build.read_def(table, "T", "U")] == ["T", "T", "U", "T"]


def test_header_cdef_takes_values_from_the_compiled_c() -> None:
    cdef = build.header_cdef(INCLUDE / "bitnet.h")
    assert "#define BITNET_E_OOM ...\n" in cdef and "#define BITNET_E_MIN ...\n" in cdef
    assert "-5" not in cdef  # no number copied out of the table
    fault = build.header_cdef(INCLUDE / "bitnet_fault.h")
    assert "#define BITNET_FAULT_MAX_DELAY_MS ...\n" in fault and "#define BITNET_FAULT_FAIL ...\n" in fault
