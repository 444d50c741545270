"""Modes, library discovery, symbols and the fallback chain (seed 003 sections 2-3).

The libraries here are real: the bundled reference library, and variants
compiled by tests/native_builds.py without chosen symbols.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import abi

from ..native_builds import build_library

LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(ERROR|WARN|INFO|DEBUG|TRACE)\] \[[\w.-]+\] .+")


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("libs")
    return {
        "no_tokenize": build_library(root / "no_tokenize", hide=["bitnet_cpp_tokenize_with_context", "crossval_bitnet_tokenize"]),
        "no_eval": build_library(root / "no_eval", hide=["bitnet_cpp_eval_with_context", "crossval_bitnet_eval_with_tokens"]),
        # without Socket 1 and without the whole of Socket 4, which would stand in for it
        "no_init": build_library(root / "no_init", hide=["bitnet_cpp_init_context", "bitnet_cpp_session_create"]),
        "abi99": build_library(root / "abi99", defines=["BITNET_ABI_VERSION=99"]),
    }


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK"):
        monkeypatch.delenv(var, raising=False)
    # These tests pin the reference engine as the fallback tier (their
    # logits must be identical, E38); tests/bridge/test_llama.py covers llama.cpp
    # in that place.
    monkeypatch.setenv("BITNET_FALLBACK", "reference")


def reference_logits(model: Path, text: str = "hello world") -> tuple[np.ndarray, np.ndarray]:
    with bn.BitnetSession.create(model) as s:
        toks = s.tokenize(text)
        return toks, s.evaluate(toks)


def test_dlopen_bundled_library_matches_embedded(tiny_model: Path) -> None:
    toks, expected = reference_logits(tiny_model)
    with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
        assert s.backend_info["create"].startswith("dlopen:") and "_libbitnet" in s.backend_info["create"]
        np.testing.assert_array_equal(s.tokenize("hello world"), toks)
        np.testing.assert_array_equal(s.evaluate(toks), expected)
        assert s.backend_info["evaluate"] == s.backend_info["create"]


def test_backend_from_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_BACKEND", "dlopen")
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.backend_info["create"].startswith("dlopen:")
    monkeypatch.setenv("BITNET_BACKEND", "bogus")
    with pytest.raises(errors.InvalidArgument, match=r"unknown backend 'bogus' \(valid: reference, dlopen, llama, stub\)"):
        bn.BitnetSession.create(tiny_model)


def test_e01_stub_mode(tiny_model: Path) -> None:
    with pytest.raises(errors.CppNotAvailable, match="STUB mode") as exc:
        bn.BitnetSession.create(tiny_model, backend="stub")
    assert "BITNET_BACKEND=reference" in str(exc.value)
    with pytest.raises(errors.CppNotAvailable, match="STUB mode"):
        bn.tokenize(tiny_model, "x", backend="stub")
    with pytest.raises(errors.CppNotAvailable, match="STUB mode"):
        bn.evaluate(tiny_model, [1, 2], backend="stub")


def test_e02_empty_library_dir_names_every_path(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(tmp_path))
    monkeypatch.setenv("BITNET_CPP_DIR", str(tmp_path / "checkout"))
    with pytest.raises(errors.LibraryNotFound) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen")
    msg = str(exc.value)
    assert f"{tmp_path}/libbitnet.so: not found" in msg
    assert f"{tmp_path}/checkout/build/bin/libbitnet.so: not found" in msg
    assert "libbitnet.so: dlopen failed" in msg  # the system loader path
    assert "BITNET_CPP_LIBDIR" in msg and "LD_LIBRARY_PATH" in msg
    assert "_libbitnet" not in msg  # explicit configuration: no bundled fallback


def test_e03_unloadable_file_carries_loader_message(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "libbitnet.so").write_bytes(b"this is not an ELF file\n" * 10)
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(tmp_path))
    with pytest.raises(errors.LibraryNotFound, match=r"libbitnet.so: dlopen failed: .*(invalid ELF header|file too short)"):
        bn.BitnetSession.create(tiny_model, backend="dlopen")


@pytest.mark.parametrize("given", ["nope.so", "{tmp}/missing/libbitnet.so", "{tmp}/not-elf.so"])
def test_an_explicit_library_path_is_named_and_advised_not_discovery(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # library_path= is not discovery: the message names that path and says
    # to check it, not "searched:" nor the discovery variables (issue 20.14).
    (tmp_path / "not-elf.so").write_bytes(b"this is not an ELF file\n" * 10)
    path = given.format(tmp=tmp_path)
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(tmp_path / "elsewhere"))  # set, and not consulted
    with pytest.raises(errors.LibraryNotFound) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=path)
    msg = str(exc.value)
    assert f"the library given as library_path= ('{path}') could not be loaded" in msg
    assert f"{path}: dlopen failed: " in msg  # the loader's own reason
    assert "Check that library_path= names" in msg
    assert "searched:" not in msg and "BITNET_CPP_LIBDIR" not in msg and "BITNET_CPP_DIR" not in msg
    # a bare name is the system loader's to find, not the current directory's
    assert ("LD_LIBRARY_PATH" in msg) == ("/" not in path)
    assert exc.value.context.native_message.count("bitnet_bridge_options.library_path") >= 1  # the C API's words, natively


def test_e05_required_symbol_missing(tiny_model: Path, libs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_CPP_LIBDIR", str(libs["no_init"].parent))
    with pytest.raises(errors.SymbolNotFound) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen")
    msg = str(exc.value)
    assert "required symbol 'bitnet_cpp_init_context' not found" in msg
    assert str(libs["no_init"]) in msg
    assert "ABI version 1" in msg and "nm -D" in msg


@pytest.mark.parametrize("variant, operation", [("no_tokenize", "tokenize"), ("no_eval", "evaluate")])
def test_e06_e07_optional_symbol_served_by_fallback(
    tiny_model: Path, libs: dict[str, Path], variant: str, operation: str, caplog: pytest.LogCaptureFixture
) -> None:
    toks, expected = reference_logits(tiny_model)
    caplog.set_level(logging.WARNING, logger="pytest_bitnet.native")
    with pytest.warns(errors.OptionalSymbolMissing, match=f"{operation} served by fallback:reference"):
        with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=libs[variant]) as s:
            np.testing.assert_array_equal(s.tokenize("hello world"), toks)
            np.testing.assert_array_equal(s.evaluate(toks), expected)  # E38: identical, not just close
            served = s.backend_info[operation]
            other = s.backend_info["evaluate" if operation == "tokenize" else "tokenize"]
    missing = "bitnet_cpp_tokenize_with_context" if operation == "tokenize" else "bitnet_cpp_eval_with_context"
    assert served == f"fallback:reference ({missing} missing)"
    assert other.startswith("dlopen:")  # no silent fallback for what the library has (E43)
    lines = [r.getMessage() for r in caplog.records if r.name == "pytest_bitnet.native"]
    assert any(missing in line and "fallback tier" in line and LOG_LINE.match(line) for line in lines), lines  # E36/E39


def test_e34_e37_forced_fallback(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toks, expected = reference_logits(tiny_model)
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            got = s.tokenize("hello world")
            assert got[0] == 1  # BOS first (E34)
            logits = s.evaluate(got)
            assert logits.shape == (len(got), s.n_vocab)  # one row per token (E37)
            assert s.backend_info["tokenize"] == s.backend_info["evaluate"] == "fallback:reference (BITNET_FORCE_LLAMA_FALLBACK=1)"
    np.testing.assert_array_equal(logits, expected)


def test_e40_no_tier_left(tiny_model: Path, libs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_FALLBACK", "none")
    with pytest.raises(errors.CppNotAvailable) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=libs["no_eval"])
    msg = str(exc.value)
    assert "bitnet_cpp_eval_with_context" in msg and "fallback tier is disabled" in msg


def test_e41_session_fallback_loads_model_once(tiny_model: Path, libs: dict[str, Path]) -> None:
    before = bn.live_counters()["model_loads"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.OptionalSymbolMissing)
        with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=libs["no_eval"]) as s:
            after_create = bn.live_counters()["model_loads"]
            toks = s.tokenize("ten calls")
            for _ in range(10):
                s.reset()
                s.evaluate(toks)
            assert bn.live_counters()["model_loads"] == after_create
    assert after_create - before == 2  # the library's context and the fallback's, once each


def test_e08_incompatible_abi(tiny_model: Path, libs: dict[str, Path]) -> None:
    with pytest.raises(errors.AbiMismatch) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=libs["abi99"])
    msg = str(exc.value)
    assert "reports ABI version 99, this bridge expects 1" in msg and "rebuild" in msg


def test_library_errors_are_recovered_whole(tmp_path: Path) -> None:
    missing = tmp_path / ("y" * 300 + ".gguf")
    with pytest.raises(errors.ModelLoadError) as exc:
        bn.BitnetSession.create(missing, backend="dlopen")
    assert "y" * 300 in str(exc.value)  # longer than the 512-byte buffer with its prefix
    assert str(exc.value).count("dlopen:") == 1


def test_e42_diagnostics(libs: dict[str, Path]) -> None:
    report = bn.diagnostics(backend="dlopen", library_path=str(libs["no_tokenize"]))
    assert report["mode"] == "dlopen" and report["library"] == str(libs["no_tokenize"])
    assert report["ok"]
    symbols = {s["name"]: s for s in report["symbols"]}
    assert symbols["bitnet_cpp_init_context"] == {"name": "bitnet_cpp_init_context", "required": True, "status": "found", "served_by": "library"}
    assert symbols["bitnet_cpp_tokenize_with_context"]["status"] == "missing"
    assert symbols["bitnet_cpp_tokenize_with_context"]["served_by"] == "fallback:reference"
    assert "BITNET_CPP_LIBDIR" in report["env"] and report["abi"] == {"found": 1, "expected": 1}
    bad = bn.diagnostics(backend="dlopen", library_path=str(libs["no_init"]))
    assert not bad["ok"] and any("bitnet_cpp_init_context" in e for e in bad["errors"])


def test_diagnostics_command_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "pytest_bitnet", "diagnostics", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["mode"] == "reference"
    env = {**os.environ, "BITNET_CPP_LIBDIR": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-m", "pytest_bitnet", "diagnostics", "--backend", "dlopen"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert "MISSING REQUIRED PARTS" in bad.stdout and f"{tmp_path}/libbitnet.so: not found" in bad.stdout


# ---- the bridge is not a backend of itself (issue 13, item 10) -----------------------------
#
# Loaded as its own backend, the bridge recursed (discovery from the
# environment: init_context ran discovery again, found itself, until SIGSEGV)
# or deadlocked (an explicit library_path: the live counters summed the
# library's, which are the bridge's own, under the loader's lock).  Each runs
# in a child, so a regression fails the test instead of taking the run with it.

_CREATE_IN_CHILD = """
import sys
import threading
import pytest_bitnet as bn
from pytest_bitnet import errors
model, paths = sys.argv[1], sys.argv[2:] or [None]
for path in paths:
    try:
        bn.BitnetSession.create(model, backend="dlopen", library_path=path).close()
    except errors.LibraryNotFound as exc:
        print("LibraryNotFound:", str(exc).replace("\\n", " | "))  # one line per attempt
    else:
        print("created")
if paths != [None]:
    report = bn.diagnostics(backend="dlopen", library_path=paths[0])
    print("diagnostics ok" if report["ok"] else "diagnostics errors: " + " | ".join(report["errors"]))
print("contexts", bn.live_counters()["contexts"])
"""


def _bridge_module() -> Path:
    from pytest_bitnet.bridge import _bridge

    return Path(_bridge.__file__).resolve()


def _in_child(model: Path, *paths: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", _CREATE_IN_CHILD, str(model), *map(str, paths)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def test_a_libdir_holding_the_bridge_itself_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "libbitnet.so").symlink_to(_bridge_module())
    out = _in_child(tiny_model, env={"BITNET_CPP_LIBDIR": str(tmp_path), "BITNET_BACKEND": "dlopen"})
    assert out.startswith("LibraryNotFound:"), out
    assert f"{tmp_path}/libbitnet.so: is this bridge itself ({_bridge_module()})" in out  # the attempt: what was found
    assert "would run this discovery again" in out  # why it cannot be used
    assert "BITNET_CPP_LIBDIR" in out  # how to fix
    assert out.endswith("contexts 0\n")


def test_the_bridge_as_an_explicit_library_path_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    link = tmp_path / "libbitnet.so"
    link.symlink_to(_bridge_module())
    lines = _in_child(tiny_model, link, _bridge_module()).splitlines()
    assert len(lines) == 4, lines
    for line in lines[:2]:
        assert line.startswith("LibraryNotFound:") and "is this bridge itself" in line, line
    assert lines[2].startswith("diagnostics errors:") and "is this bridge itself" in lines[2]
    assert lines[3] == "contexts 0"


# ---- library objects under armed points (issue 13, item 6) ----------------------------


def library_objects() -> tuple[int, int]:
    """(cached libraries, live views) of the loader."""
    libraries, views = abi.ffi.new("int32_t *"), abi.ffi.new("int32_t *")
    abi.lib.bitnet_bridge_library_objects(libraries, views)
    return int(libraries[0]), int(views[0])


def test_loads_while_any_point_is_armed_reuse_the_cached_library(tiny_model: Path) -> None:
    # With anything armed the loader used to skip its cache (so the dlopen
    # and dlsym.* points are reached) and made a new ~8 KB library object
    # per load, never freed and not counted: 4000 loads under eval_gpu=off
    # grew RSS 41.7 -> 106.4 MB.  The points are still reached on every
    # load; the object is the cached one.
    bn.tokenize(tiny_model, "x", backend="dlopen")  # the bundled library, loaded and cached
    before = library_objects()
    with pytest.warns(fi.NeverHitWarning), fi.inject("eval_gpu=off;dlopen=off") as armed:
        for _ in range(1000):  # two loads each: the query and the fill
            bn.tokenize(tiny_model, "hello world", backend="dlopen")
        for _ in range(30):
            with bn.BitnetSession.create(tiny_model, backend="dlopen"):
                pass
        assert armed.hits("dlopen") >= 2030  # reached on every load, cached or not
    assert library_objects() == before


def test_a_library_seen_through_a_dlsym_fault_is_counted_and_freed_with_its_holder(tiny_model: Path) -> None:
    # A load under dlsym.<symbol>=missing must see the library without the
    # symbol (a view of it), and that view is the holder's: freed with the
    # call or context, counted while it lives.
    bn.tokenize(tiny_model, "x", backend="dlopen")
    libraries, views = library_objects()
    assert views == 0
    with bn.BitnetSession.create(tiny_model, backend="dlopen"):
        whole = bn.live_counters()
    with fi.inject("dlsym.bitnet_cpp_eval_gpu=missing"):
        for _ in range(300):
            bn.tokenize(tiny_model, "hello world", backend="dlopen")
        assert library_objects() == (libraries, 0)
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as s:
            assert library_objects() == (libraries, 1)  # held by the context
            seen = bn.live_counters()
            assert seen["allocations"] - whole["allocations"] == 1 and seen["bytes"] > whole["bytes"]
            with pytest.raises(errors.Unsupported):  # the view has no eval_gpu
                _eval_gpu(s)
    assert library_objects() == (libraries, 0)


def _eval_gpu(s: bn.BitnetSession) -> None:
    rows, cols = abi.ffi.new("int32_t *"), abi.ffi.new("int32_t *")
    toks = abi.ffi.new("int32_t[]", [1, 2])
    err = abi.ffi.new("char[]", abi.ERR_LEN)
    rc = abi.lib.bitnet_cpp_eval_gpu(s.handle, toks, 2, abi.ffi.NULL, 0, rows, cols, err, len(err))
    abi.raise_for_code(rc, "eval_gpu", err)


def test_a_dlsym_fault_leaves_no_faulted_library_for_later_loads(tiny_model: Path) -> None:
    with pytest.warns(errors.OptionalSymbolMissing), fi.inject("dlsym.bitnet_cpp_tokenize_with_context=missing"):
        held = bn.BitnetSession.create(tiny_model, backend="dlopen")
        held.tokenize("hello")
    try:
        with bn.BitnetSession.create(tiny_model, backend="dlopen") as fresh:
            fresh.tokenize("hello")
            assert fresh.backend_info["tokenize"].startswith("dlopen:")  # the whole library
        with pytest.warns(errors.OptionalSymbolMissing):
            held.tokenize("hello")  # still the library it was created with
        assert held.backend_info["tokenize"].startswith("fallback:")
    finally:
        held.close()


# ---- the loader's lock: no fault point and no host code waits under it (issue 13, item 9) ---
#
# Every dlopen create, per-call function and live-counter read takes the
# loader's lock.  Its `dlopen` and `dlsym.*` points fired while it was held,
# so a `dlopen=hang` (or delay) in one thread's load stalled every other
# thread's load and the leak check's counter read for as long as it lasted;
# and a load logged under it, so a logging handler reading the live counters
# on the loading thread deadlocked for ever.


def test_a_load_hanging_at_its_dlopen_point_stalls_no_other_load(tiny_model: Path) -> None:
    bn.tokenize(tiny_model, "x", backend="dlopen")  # the bundled library, cached
    box: dict[str, object] = {}
    ready = threading.Event()

    def hanging_create() -> None:
        with fi.inject("dlopen=hang", thread=True) as armed:
            box["armed"] = armed
            ready.set()
            try:
                bn.BitnetSession.create(tiny_model, backend="dlopen", timeout=5).close()
            except errors.OperationTimeout as exc:
                box["error"] = exc

    t = threading.Thread(target=hanging_create)
    t.start()
    ready.wait()
    assert box["armed"].wait_hit("dlopen", while_alive=t)  # type: ignore[attr-defined]
    results: list[object] = []
    u = threading.Thread(target=lambda: results.extend([bn.live_counters()["contexts"],
                                                        bn.tokenize(tiny_model, "hello", backend="dlopen").size]))
    u.start()
    u.join(timeout=4.0)  # honest bound: the hang lasts 5 s, these take milliseconds
    stalled = u.is_alive()
    u.join()
    t.join()
    assert not stalled, "another thread's load waited for the loader's lock while a dlopen point hung"
    assert len(results) == 2 and isinstance(box.get("error"), errors.OperationTimeout)


_LOG_HANDLER_READS_COUNTERS = """
import logging, shutil, sys
import pytest_bitnet as bn
from pytest_bitnet.bridge import abi, native_log

class ReadCounters(logging.Handler):
    def emit(self, record):
        if "] loaded " in record.getMessage():
            self.seen = bn.live_counters()["contexts"]  # on the loading thread, inside the load

handler = ReadCounters()
native_log.native_log.addHandler(handler)
native_log.native_log.setLevel(logging.INFO)
native_log.set_native_level("info")
copy = shutil.copy(abi.bundled_library(), sys.argv[2])  # a file not loaded yet: this load opens it
with bn.BitnetSession.create(sys.argv[1], backend="dlopen", library_path=copy):
    pass
print("seen", handler.seen)
"""


def test_a_log_handler_may_read_the_counters_inside_a_load(tiny_model: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _LOG_HANDLER_READS_COUNTERS, str(tiny_model), str(tmp_path / "libbitnet.so")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "seen 0\n"


# ---- the dlopen point's `missing`, and a view that cannot be allocated ---------------------------


def test_dlopen_missing_makes_an_explicit_library_absent(tiny_model: Path) -> None:
    bundled = abi.bundled_library()
    assert bundled is not None
    base = {k: v for k, v in bn.live_counters().items() if k in ("contexts", "sessions", "bytes")}
    with fi.inject("dlopen=missing") as armed:
        with pytest.raises(errors.LibraryNotFound) as info:
            bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=bundled)
    msg = str(info.value)
    assert f"the library given as library_path= ('{bundled}') could not be loaded" in msg
    assert f"{bundled}: not found (injected fault at 'dlopen' (missing, hit 1))" in msg
    assert armed.fired("dlopen") == 1
    assert {k: v for k, v in bn.live_counters().items() if k in base} == base
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=bundled) as s:  # disarmed: there again
        assert len(s.tokenize("hi")) > 1


def test_dlopen_missing_makes_the_llama_adapter_absent(tiny_model: Path) -> None:
    from pytest_bitnet.bridge.llama import configured

    llama = configured()
    if not llama.available:
        pytest.skip(f"llama.cpp backend unavailable: {llama.reason}")
    with fi.inject("dlopen=missing"):
        with pytest.raises(errors.LibraryNotFound, match=r"the llama\.cpp adapter '.+' \(for .+\) could not be loaded: .*not found \(injected fault at 'dlopen' \(missing, hit 1\)\)"):
            bn.BitnetSession.create(tiny_model, backend="llama")


def test_out_of_memory_for_a_library_view_fails_create_cleanly(tiny_model: Path) -> None:
    # a dlsym fault hands the load a view of the cached library without the
    # symbol (loader.c, hand_out): its allocation fails in some iteration
    base = {k: v for k, v in bn.live_counters().items() if k in ("contexts", "sessions", "bytes")}
    seen = ""
    for k in range(200):
        alloc = f"alloc={k}*off->1*oom->off" if k else "alloc=1*oom->off"
        with fi.inject(f"dlsym.bitnet_cpp_eval_gpu=missing;{alloc}") as armed:
            try:
                with bn.BitnetSession.create(tiny_model, backend="dlopen"):
                    pass
            except errors.OutOfMemory as exc:
                if "library view" in str(exc):
                    seen = str(exc)
            else:
                assert armed.fired("alloc") == 0
                break
        assert {k: v for k, v in bn.live_counters().items() if k in base} == base
        if seen:
            break
    assert re.search(r"loading '.+': out of memory: could not allocate \d+ bytes for library view \(injected fault at 'alloc'", seen), seen
