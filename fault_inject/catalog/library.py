"""E01-E08: finding and loading the backend library, and its symbols.

These entries drive the bridge's loader (dlopen mode) whatever the column:
on the reference and stub columns they load the bundled reference library,
on the dlopen column the library under test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest_bitnet as bn
from pytest_bitnet.bridge.abi import lib

from ._core import STUB_SAME, Scenario, ScenarioFailed, entry

# The loader's guidance, in every "library not found" message.
_GUIDANCE = ("BITNET_CPP_LIBDIR", "LD_LIBRARY_PATH")


@entry("E01", "library", "bridge in STUB mode → CppNotAvailable saying how to enable a backend",
       expect="CppNotAvailable", fragments=("STUB mode", "BITNET_BACKEND=reference"), stub=STUB_SAME)
def e01(s: Scenario) -> None:
    """create / tokenize / evaluate with backend='stub'"""
    s.fails(bn.BitnetSession.create, s.model, backend="stub")
    s.fails(bn.tokenize, s.model, "x", backend="stub")
    s.fails(bn.evaluate, s.model, [1, 2], backend="stub")


@entry("E02", "library", "DLOPEN, library dir empty → LibraryNotFound naming the file and every path searched",
       expect="LibraryNotFound", fragments=("{tmp}/libbitnet.so: not found", "{tmp}/checkout/build/bin/libbitnet.so: not found",
                                            "libbitnet.so: dlopen failed", *_GUIDANCE), stub=STUB_SAME)
def e02(s: Scenario) -> None:
    """BITNET_CPP_LIBDIR=<empty dir>; BitnetSession.create(model, backend='dlopen')"""
    with s.env(BITNET_CPP_LIBDIR=str(s.tmp), BITNET_CPP_DIR=str(s.tmp / "checkout")):
        err = s.fails(bn.BitnetSession.create, s.model, backend="dlopen")
    s.check("_libbitnet" not in str(err), "explicit configuration must not fall back to the bundled library")


@entry("E03", "library", "library file exists but cannot be loaded → LibraryNotFound carrying the loader's own message",
       expect="LibraryNotFound", fragments=("{tmp}/libbitnet.so: dlopen failed:", *_GUIDANCE), stub=STUB_SAME)
def e03(s: Scenario) -> None:
    """BITNET_CPP_LIBDIR=<dir with a libbitnet.so that is not ELF>; create(backend='dlopen')"""
    (s.tmp / "libbitnet.so").write_bytes(b"this is not an ELF file\n" * 10)
    with s.env(BITNET_CPP_LIBDIR=str(s.tmp)):
        err = s.fails(bn.BitnetSession.create, s.model, backend="dlopen")
    s.check(any(why in str(err) for why in ("invalid ELF header", "file too short")), "the dynamic loader's own reason is missing")


@entry("E04", "library", "native and fallback both unavailable → CppNotAvailable",
       expect="CppNotAvailable", fragments=("no tier can serve", "is bypassed (BITNET_FORCE_LLAMA_FALLBACK=1)", "BITNET_FALLBACK=none", "enable the fallback"),
       stub=STUB_SAME)
def e04(s: Scenario) -> None:
    """BITNET_FORCE_LLAMA_FALLBACK=1 and BITNET_FALLBACK=none; create(backend='dlopen')"""
    with s.env(BITNET_FORCE_LLAMA_FALLBACK="1", BITNET_FALLBACK="none"):
        s.fails(bn.BitnetSession.create, s.model, **s.library_args())


@entry("E05", "symbols", "required `bitnet_cpp_init_context` missing → SymbolNotFound naming symbol, library, version guidance",
       expect="SymbolNotFound", inject="dlsym.bitnet_cpp_init_context=missing;dlsym.bitnet_cpp_session_create=missing",
       fragments=("required symbol 'bitnet_cpp_init_context' not found", "ABI version", "nm -D"), stub=STUB_SAME)
def e05(s: Scenario) -> None:
    """create(backend='dlopen') on a library lacking bitnet_cpp_init_context (and Socket 4, which could stand in)"""
    err = s.fails(bn.BitnetSession.create, s.model, **s.library_args())
    s.check(".so" in str(err), "the message does not name the library")


def _served_by_fallback(s: Scenario, operation: str, missing: str) -> None:
    with bn.BitnetSession.create(s.model, backend="reference") as reference:
        want_tokens = reference.tokenize("hello world")
        want_logits = reference.evaluate(want_tokens)
    sess = s.session(**s.library_args())
    if operation == "tokenize":
        tokens = s.warns(sess.tokenize, "hello world")
        logits = sess.evaluate(tokens)
    else:
        tokens = sess.tokenize("hello world")
        logits = s.warns(sess.evaluate, tokens)
    served = sess.backend_info.get(operation, "")
    s.check(served.startswith("fallback:") and missing in served, f"{operation} served by {served!r}, not the fallback tier")
    s.check(list(tokens) == list(want_tokens), "the fallback's tokens differ from the reference")
    s.check(abs(logits - want_logits).max() <= 1e-3, "the fallback's logits differ from the reference")


@entry("E06", "symbols", "optional tokenize symbol missing → OptionalSymbolMissing warning, tokenize served by fallback",
       expect="OptionalSymbolMissing", inject="dlsym.bitnet_cpp_tokenize_with_context=missing",
       fragments=("bitnet_cpp_tokenize_with_context", "tokenize served by fallback"), stub=STUB_SAME)
def e06(s: Scenario) -> None:
    """create(backend='dlopen') on a library lacking bitnet_cpp_tokenize_with_context; tokenize"""
    _served_by_fallback(s, "tokenize", "bitnet_cpp_tokenize_with_context")


@entry("E07", "symbols", "optional eval symbol missing → OptionalSymbolMissing warning, eval served by fallback",
       expect="OptionalSymbolMissing", inject="dlsym.bitnet_cpp_eval_with_context=missing",
       fragments=("bitnet_cpp_eval_with_context", "evaluate served by fallback"), stub=STUB_SAME)
def e07(s: Scenario) -> None:
    """create(backend='dlopen') on a library lacking bitnet_cpp_eval_with_context; evaluate"""
    _served_by_fallback(s, "evaluate", "bitnet_cpp_eval_with_context")


@entry("E08", "symbols", "library reports an incompatible ABI version → error with expected vs found and rebuild guidance",
       expect="AbiMismatch", fragments=("reports ABI version {found}", "this bridge expects {expected}", "rebuild"),
       stub=STUB_SAME)
def e08(s: Scenario) -> None:
    """create(backend='dlopen', library_path=<a real library reporting ABI version N+1>)"""
    expected = int(lib.BITNET_ABI_VERSION)
    s.values.update(found=expected + 1, expected=expected)
    path = library_with_abi(s.tmp, expected + 1)
    s.fails(bn.BitnetSession.create, s.model, backend="dlopen", library_path=str(path))


def library_with_abi(where: Path, version: int) -> Path:
    """A real shared library exporting every required socket symbol, reporting `version`.

    Its functions only fail (the loader checks the ABI before calling any);
    what matters is that it is a genuine ELF object the dynamic loader maps.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ScenarioFailed("no C compiler (cc/gcc) to build the library this entry loads")
    required = [sym["name"] for sym in bn.diagnostics(backend="dlopen")["symbols"] if sym["required"]]
    src = where / "abi.c"
    src.write_text(
        "#include <stdint.h>\n"
        + "".join(f"int {name}(void) {{ return -10; }}\n" for name in required if name != "bitnet_cpp_abi_version")
        + f"int32_t bitnet_cpp_abi_version(void) {{ return {version}; }}\n"
    )
    out = where / "libbitnet.so"
    proc = subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], capture_output=True, text=True)
    if proc.returncode:
        raise ScenarioFailed(f"building the ABI {version} library failed: {proc.stderr.strip()}")
    return out
