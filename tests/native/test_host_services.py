"""Host services through dlopen (native/include/bitnet_host.h).

The bundled standalone library is a separate shared object with its own
statics; once the bridge attaches it, the caller's deadlines, the bridge's
log sink and the bridge's fault engine reach inside it.  Every test here
runs the error-path catalog through ``backend="dlopen"`` and expects what
the embedded engine gives in-process.  The libraries are real: the bundled
one, and a variant compiled by tests/native_builds.py from another
points.def.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import native_log
from pytest_bitnet.bridge.abi import bundled_library
from pytest_bitnet.bridge.counters import LEAK_COUNTERS

from ..native_builds import build_library

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] \[(ERROR|WARN|INFO|DEBUG|TRACE)\] \[([\w.-]+)\] (.+)$")
# A deadline is noticed within a poll period or one step: generous for CI.
SLACK = 0.5

pytestmark = pytest.mark.skipif(bundled_library() is None, reason="the standalone library is not built")


@pytest.fixture(autouse=True)
def _bundled_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # dlopen with no configured place loads the bundled standalone library
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK"):
        monkeypatch.delenv(var, raising=False)
    assert not fi.armed(), "a previous test left points armed"
    yield
    fi.disarm_all()


@pytest.fixture
def native_debug() -> Iterator[None]:
    saved = native_log.native_level()
    native_log.set_native_level("debug")
    yield
    native_log.set_native_level(saved)


def counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in LEAK_COUNTERS}


def dlopen_session(model: Path, **kw: object) -> bn.BitnetSession:
    s = bn.BitnetSession.create(model, backend="dlopen", **kw)  # type: ignore[arg-type]
    assert s.backend_info["create"].startswith("dlopen:") and "_libbitnet" in s.backend_info["create"]
    return s


# ---- deadlines reach inside the library ---------------------------------------------------------


def test_eval_step_hang_times_out_at_the_callers_deadline(tiny_model: Path) -> None:
    threads = threading.active_count()
    with dlopen_session(tiny_model, timeout=0.2) as s:
        toks = s.tokenize("hello world")
        with fi.inject("eval.step=hang") as armed:
            t0 = time.perf_counter()
            with pytest.raises(errors.OperationTimeout, match="evaluate timed out") as info:
                s.evaluate(toks)
            took = time.perf_counter() - t0
        assert 0.2 <= took < 0.2 + SLACK
        assert "injected fault at 'eval.step' (hang, hit 1)" in str(info.value)
        assert armed.hits("eval.step") == 1 and armed.fired("eval.step") == 1
        assert s.n_past() == 0  # the failed call left the sequence alone
        assert np.isfinite(s.evaluate(toks)).all()  # still usable
    assert threading.active_count() == threads


def test_tokenize_step_hang_times_out_at_the_callers_deadline(tiny_model: Path) -> None:
    with dlopen_session(tiny_model, timeout=0.2) as s:
        with fi.inject("tokenize.step=hang"):
            t0 = time.perf_counter()
            with pytest.raises(errors.OperationTimeout, match=r"injected fault at 'tokenize.step' \(hang, hit 1\)"):
                s.tokenize("hello there")
            assert time.perf_counter() - t0 < 0.2 + SLACK
        assert len(s.tokenize("hello there")) > 1


def test_slow_load_is_bounded_by_the_create_timeout(tiny_model: Path) -> None:
    base = counters()
    with fi.inject("load.step=delay(100)") as armed:
        t0 = time.perf_counter()
        with pytest.raises(errors.OperationTimeout, match="create timed out") as info:
            dlopen_session(tiny_model, timeout=0.25)
        took = time.perf_counter() - t0
    assert took < 0.25 + SLACK
    assert "injected fault at 'load.step' (delay(100), hit " in str(info.value)
    assert armed.fired("load.step") >= 2  # delays that ran out, then the cut one
    assert counters() == base


def test_a_plain_deadline_is_checked_at_the_librarys_step_points(tiny_model: Path) -> None:
    # no fault at all: the tokenizer's own step checks see the caller's deadline
    with dlopen_session(tiny_model) as s:
        with pytest.raises(errors.OperationTimeout, match="tokenize timed out"):
            s.tokenize("word " * 5000, timeout=0)
        assert len(s.tokenize("still works")) > 1


# ---- engine fault points inside the library ------------------------------------------------------


def test_alloc_oom_anywhere_in_create_fails_cleanly(tiny_model: Path) -> None:
    """Every allocation of a dlopen create, the bridge's and the library's, in turn."""
    base = counters()
    inside = 0
    for k in range(2000):
        with fi.inject(f"alloc={k}*off->1*oom->off" if k else "alloc=1*oom->off") as armed:
            try:
                with dlopen_session(tiny_model):
                    pass
            except errors.OutOfMemory as exc:
                msg = str(exc)
                assert "out of memory" in msg
                if "injected fault" in msg:  # some sites word their own OOM
                    assert f"injected fault at 'alloc' (oom, hit {k + 1})" in msg
                inside += "dlopen:" in msg  # reported by the library
            else:
                assert armed.fired("alloc") == 0
                break
        assert armed.fired("alloc") == 1
        assert counters() == base, f"leak after failing allocation {k + 1}"
    else:
        pytest.fail("create never succeeded")
    assert k > 10 and inside >= k - 3  # nearly all allocations are the library's


def test_inject_handle_counts_engine_points_hit_in_the_library(tiny_model: Path) -> None:
    # eval.step is reached once per layer (the tiny model has 2)
    with dlopen_session(tiny_model) as s:
        toks = s.tokenize("hello world")
        with fi.inject("eval.step=1*off->1*fail->off") as armed:
            with pytest.raises(errors.InferenceError, match=r"injected fault at 'eval.step' \(fail\(-4\), hit 2\)"):
                s.evaluate(toks)
            assert s.n_past() == 0
            logits = s.evaluate(toks)  # hits 3 and 4: off
        assert armed.hits("eval.step") == 4 and armed.fired("eval.step") == 1
        assert np.isfinite(logits).all()


# Boundary points (placed in native/bridge) next to the engine points they
# surround: the library's copy of the bridge layer must not count a call the
# loading bridge already counted.  alloc is left out: the library's own
# bridge layer allocates a handle of its own, which in-process has no twin.
COUNTED = ("init_context", "free_context", "load.step", "tokenize.query", "tokenize.fill", "tokenize.step",
           "eval.query", "eval.fill", "eval.step", "eval.logits")


def workload_hits(model: Path, backend: str) -> dict[str, int]:
    with fi.inject(";".join(f"{p}=off" for p in COUNTED)) as armed:
        with bn.BitnetSession.create(model, backend=backend) as s:
            toks = s.tokenize("hello world, twice")
            s.evaluate(toks[:3])
            s.evaluate(toks[3:])
        return {p: armed.hits(p) for p in COUNTED}


def test_boundary_hit_counts_are_the_same_in_process_and_via_dlopen(tiny_model: Path) -> None:
    embedded = workload_hits(tiny_model, "reference")
    loaded = workload_hits(tiny_model, "dlopen")
    assert loaded == embedded
    assert embedded["tokenize.fill"] == 1 and embedded["eval.fill"] == 2 and embedded["init_context"] == 1


def test_a_boundary_fault_fires_once_via_dlopen(tiny_model: Path) -> None:
    with dlopen_session(tiny_model) as s:
        with fi.inject("tokenize.fill=fail") as armed:
            with pytest.raises(errors.InferenceError, match=r"injected fault at 'tokenize.fill' \(fail\(-4\), hit 1\)"):
                s.tokenize("hello")
        assert armed.hits("tokenize.fill") == 1 and armed.fired("tokenize.fill") == 1


def test_the_guests_own_fault_control_refuses_arming() -> None:
    """The library lists its points but arms none: the bridge's engine does."""
    path = bundled_library()
    assert path is not None
    guest = ctypes.CDLL(str(path))
    assert guest.bitnet_fault_compiled_in() == 0
    assert guest.bitnet_fault_point_count() == len(fi.points())
    err = ctypes.create_string_buffer(512)
    n = ctypes.c_int32(-1)
    rc = guest.bitnet_fault_disarm(b"eval.step", ctypes.byref(n), err, len(err))
    assert errors.error_for_code(rc) is errors.Unsupported
    assert n.value == 0 and b"must be armed there" in err.value


# ---- bitnet_host_attach's checks ------------------------------------------------------------------

# bitnet_host_t (bitnet_host.h): int32 size, int32 abi, then the function pointers
_ABI_OFFSET, _DEADLINE_CHECK_OFFSET = 4, 8


def _guest_attach(table: object) -> tuple[int, str]:
    """bitnet_host_attach of the bundled library: its code and its own last error."""
    path = bundled_library()
    assert path is not None
    guest = ctypes.CDLL(str(path))
    guest.bitnet_host_attach.argtypes = [ctypes.c_void_p]
    rc = guest.bitnet_host_attach(table)
    err = ctypes.create_string_buffer(1024)
    guest.bitnet_cpp_get_last_error(err, len(err))
    return rc, err.value.decode()


def _bridge_table_copy() -> ctypes.Array[ctypes.c_char]:
    """A byte-for-byte copy of the bridge's host table, at another address."""
    import pytest_bitnet.bridge._bridge as bridge_module

    bridge = ctypes.CDLL(bridge_module.__file__)
    bridge.bitnet_bridge_host_table.restype = ctypes.c_void_p
    table = bridge.bitnet_bridge_host_table()
    size = ctypes.c_int32.from_address(table).value
    return ctypes.create_string_buffer(ctypes.string_at(table, size), size)


def test_attach_refuses_a_null_a_foreign_and_an_incomplete_host_table(tiny_model: Path) -> None:
    # the library is attached to this process's bridge first (a dlopen
    # create), so none of the refusals below can leave it unattached
    with dlopen_session(tiny_model) as s:
        rc, msg = _guest_attach(None)
        assert errors.error_for_code(rc) is errors.InvalidArgument and msg == "bitnet_host_attach: host is NULL"

        table = _bridge_table_copy()
        ctypes.c_int32.from_buffer(table, _ABI_OFFSET).value = 99
        rc, msg = _guest_attach(ctypes.addressof(table))
        assert rc == bn.bridge.abi.lib.BITNET_E_ABI_MISMATCH
        assert re.match(r"host table ABI 99 \(\d+ bytes\) is not the 1 \(\d+ bytes\) this library was built for: rebuild", msg), msg

        table = _bridge_table_copy()
        ctypes.c_void_p.from_buffer(table, _DEADLINE_CHECK_OFFSET).value = None
        rc, msg = _guest_attach(ctypes.addressof(table))
        assert errors.error_for_code(rc) is errors.InvalidArgument
        assert "host table lacks a required function (deadlines, logging and last_error are mandatory)" in msg

        # a whole, valid table of another bridge: a library serves one
        other = _bridge_table_copy()  # kept alive across the call
        rc, msg = _guest_attach(ctypes.addressof(other))
        assert errors.error_for_code(rc) is errors.InvalidArgument
        assert "this library is already attached to another bridge in this process" in msg
        # still the bridge's: its deadlines and fault points still reach inside
        with fi.inject("tokenize.step=fail") as armed:
            with pytest.raises(errors.InferenceError, match="injected fault at 'tokenize.step'"):
                s.tokenize("hello")
        assert armed.hits("tokenize.step") >= 1
        assert len(s.tokenize("hello")) > 1


# ---- logging --------------------------------------------------------------------------------------


def model_lines(caplog: pytest.LogCaptureFixture, model: Path) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pytest_bitnet.native" and f"loaded '{model}'" in r.getMessage()]


def test_library_log_lines_reach_logging_once_in_the_bridges_format(
    tiny_model: Path, caplog: pytest.LogCaptureFixture, native_debug: None
) -> None:
    model = tiny_model
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    for backend in ("reference", "dlopen"):
        caplog.clear()
        with bn.BitnetSession.create(model, backend=backend):
            pass
        records = model_lines(caplog, model)
        assert len(records) == 1, (backend, [r.getMessage() for r in records])
        m = LINE.match(records[0].getMessage())
        assert m and m.group(1) == "DEBUG" and m.group(2) == "model"
        assert records[0].levelno == logging.DEBUG and records[0].bitnet_component == "model"  # type: ignore[attr-defined]


def test_library_logging_follows_the_bridges_threshold(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved = native_log.native_level()
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    try:
        native_log.set_native_level("info")  # the library's own threshold stays as it was
        with dlopen_session(tiny_model):
            pass
    finally:
        native_log.set_native_level(saved)
    assert not model_lines(caplog, tiny_model)


# ---- a library built from another points.def -----------------------------------------------------


@pytest.fixture(scope="module")
def other_registry_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(tmp_path_factory.mktemp("other_registry"), defines=["BN_FAULT_TEST_EXTRA_POINT=1"])


def test_registry_mismatch_declines_faults_but_keeps_deadlines_and_logging(
    other_registry_library: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture, native_debug: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=other_registry_library) as s:
        lines = [r.getMessage() for r in caplog.records if r.name == "pytest_bitnet.native"]
        declined = [m for m in lines if "declined fault points" in m]
        assert len(declined) == 1, lines
        assert "[WARN] [loader]" in declined[0] and "fault registry hash" in declined[0]
        assert str(other_registry_library) in declined[0]
        assert len(model_lines(caplog, tiny_model)) == 1  # logging attached all the same

        toks = s.tokenize("hello world")
        with pytest.warns(fi.NeverHitWarning, match="eval.step"), fi.inject("eval.step=fail") as armed:
            logits = s.evaluate(toks)  # the library's points stay inert
        assert armed.hits("eval.step") == 0 and np.isfinite(logits).all()
        with fi.inject("eval.fill=fail"):  # the bridge's own boundary points still fire
            with pytest.raises(errors.InferenceError, match="injected fault at 'eval.fill'"):
                s.evaluate(toks)
        with pytest.raises(errors.OperationTimeout, match="tokenize timed out"):
            s.tokenize("word " * 5000, timeout=0)  # deadlines attached


def test_a_library_reloaded_while_armed_is_attached_and_counted_once(
    other_registry_library: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # While anything is armed the loader resolves afresh (so dlopen and
    # dlsym.* are reachable); dlopen hands back the same library, which was
    # attached on its first load and whose objects must count once.
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet.native")

    def attaches() -> int:
        return sum("declined fault points" in r.getMessage() or "attached host services" in r.getMessage() for r in caplog.records)

    models = bn.live_counters()["models"]
    with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=other_registry_library):
        first = attaches()  # 1, or 0 when an earlier test loaded it
        with fi.inject("init_context=off"):
            with bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=other_registry_library):
                assert bn.live_counters()["models"] == models + 2  # one per session, not per list entry
    assert first <= 1 and attaches() == first
