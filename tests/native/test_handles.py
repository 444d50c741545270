"""The handle registry (native/bridge/handles.c) at the C ABI.

A handle is valid exactly while its object lives: a freed one stays
BITNET_E_INVALID_HANDLE whatever is created after it, even when the new
object gets the freed memory (glibc does that for the next allocation of
the same size); a free that fails leaves the handle valid for the retry;
and nothing that may sleep runs while the registry's lock is held.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.abi import ffi, lib

# Address reuse was 19 creates in 20 before handles were generation-checked:
# enough repetitions that a pointer-identity registry cannot pass by luck.
REPEAT = 10

# The registry starts at 16 slots and doubles: a process holding fewer than
# ~500 handles grows it within this many creates.
MAX_CREATES_TO_GROW = 600


def _err() -> Any:
    return ffi.new("char[]", 512)


def _init(model: Path, n_ctx: int = 32) -> Any:
    out = ffi.new("bitnet_context_t **")
    e = _err()
    assert lib.bitnet_cpp_init_context(out, str(model).encode(), n_ctx, 0, e, len(e)) == 0, ffi.string(e)
    return out[0]


def _n_past(ctx: Any) -> int:
    out = ffi.new("int32_t *")
    assert lib.bitnet_cpp_get_n_past(ctx, 0, out) == 0
    return int(out[0])


def _eval(ctx: Any, tokens: list[int]) -> int:
    toks = ffi.new("int32_t[]", tokens)
    rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
    e = _err()
    rc = lib.bitnet_cpp_eval_with_context(ctx, toks, len(tokens), 0, ffi.NULL, 0, rows, cols, e, len(e))
    if rc:
        return int(rc)
    out = ffi.new("float[]", rows[0] * cols[0])
    return int(lib.bitnet_cpp_eval_with_context(ctx, toks, len(tokens), 0, out, rows[0] * cols[0], rows, cols, e, len(e)))


def test_a_freed_context_handle_never_names_the_next_context(tiny_model: Path) -> None:
    n = ffi.new("int32_t *")
    e = _err()
    for _ in range(REPEAT):
        stale = _init(tiny_model)
        assert lib.bitnet_cpp_free_context(stale) == 0
        fresh = _init(tiny_model)  # usually in the memory `stale` pointed to
        try:
            assert lib.bitnet_cpp_tokenize_with_context(stale, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
            assert _eval(stale, [1, 5, 7]) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_cpp_get_n_past(stale, 0, n) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_cpp_reset_context(stale, -1) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_bridge_cancel(stale) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_cpp_free_context(stale) == lib.BITNET_E_INVALID_HANDLE
            assert _n_past(fresh) == 0  # nothing above reached it
        finally:
            assert lib.bitnet_cpp_free_context(fresh) == 0


def test_a_freed_session_handle_never_names_the_next_session(tiny_model: Path) -> None:
    out = ffi.new("bitnet_session_t **")
    n = ffi.new("int32_t *")
    e = _err()
    for _ in range(REPEAT):
        assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), ffi.NULL, 32, 0, e, len(e)) == 0
        stale = out[0]
        assert lib.bitnet_cpp_session_free(stale) == 0
        assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), ffi.NULL, 32, 0, e, len(e)) == 0
        fresh = out[0]
        try:
            assert lib.bitnet_cpp_session_tokenize(stale, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_cpp_session_free(stale) == lib.BITNET_E_INVALID_HANDLE
            assert lib.bitnet_cpp_session_tokenize(fresh, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
        finally:
            assert lib.bitnet_cpp_session_free(fresh) == 0


def test_cancel_on_a_stale_handle_does_not_cancel_the_call_of_the_next_context(tiny_model: Path) -> None:
    # cancel() captured the handle, the context was freed and a new one made;
    # the stale cancel must not stop the new context's call in flight.
    for _ in range(3):
        stale = _init(tiny_model)
        assert lib.bitnet_cpp_free_context(stale) == 0
        fresh = _init(tiny_model)
        result: list[int] = []
        try:
            with fi.inject("eval.step=1*delay(200)") as armed:
                t = threading.Thread(target=lambda: result.append(_eval(fresh, [1, 5, 7])))
                t.start()
                assert armed.wait_hit("eval.step", while_alive=t)  # the call is inside its delayed layer
                assert lib.bitnet_bridge_cancel(stale) == lib.BITNET_E_INVALID_HANDLE
                t.join()
            assert result == [0] and _n_past(fresh) == 3
        finally:
            assert lib.bitnet_cpp_free_context(fresh) == 0


def test_handles_of_other_kinds_and_forged_values_are_invalid(tiny_model: Path) -> None:
    out = ffi.new("bitnet_session_t **")
    n = ffi.new("int32_t *")
    e = _err()
    ctx = _init(tiny_model)
    assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), ffi.NULL, 32, 0, e, len(e)) == 0
    try:
        as_session = ffi.cast("bitnet_session_t *", ctx)
        assert lib.bitnet_cpp_session_tokenize(as_session, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
        as_context = ffi.cast("bitnet_context_t *", out[0])
        assert lib.bitnet_cpp_tokenize_with_context(as_context, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
        for forged in (1, 3, 0xFFFFFFFF, 2**63 + 1, int(ffi.cast("uintptr_t", ctx)) ^ (1 << 40)):
            h = ffi.cast("bitnet_context_t *", forged)
            assert lib.bitnet_cpp_tokenize_with_context(h, b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == lib.BITNET_E_INVALID_HANDLE
            assert b"invalid context handle" in ffi.string(e)
    finally:
        assert lib.bitnet_cpp_session_free(out[0]) == 0
        assert lib.bitnet_cpp_free_context(ctx) == 0


def test_served_by_and_backend_name_copy_into_the_callers_buffer(tiny_model: Path) -> None:
    # Issue 13 item 1: they returned pointers into the context, read after
    # the registry's lock was dropped (a use-after-free under a concurrent
    # close; the race itself is in tests/bridge/test_stress.py, which the
    # sanitizer pass runs).  Now the text is copied while the handle is held.
    stale = _init(tiny_model)
    assert lib.bitnet_bridge_served_by(stale, b"tokenize", ffi.NULL, 0) == len("reference")  # size query
    small = ffi.new("char[]", 4)
    assert lib.bitnet_bridge_served_by(stale, b"evaluate", small, len(small)) == len("reference")
    assert ffi.string(small) == b"ref"  # truncated, NUL-terminated
    name = ffi.new("char[]", 64)
    assert lib.bitnet_bridge_backend_name(stale, name, len(name)) == len("reference") and ffi.string(name) == b"reference"
    assert lib.bitnet_bridge_served_by(stale, b"detokenize", name, len(name)) == len("reference")
    assert lib.bitnet_bridge_served_by(stale, b"summarize", name, len(name)) == lib.BITNET_E_INVALID_ARG
    assert lib.bitnet_cpp_free_context(stale) == 0
    fresh = _init(tiny_model)
    try:
        assert lib.bitnet_bridge_served_by(stale, b"tokenize", name, len(name)) == lib.BITNET_E_INVALID_HANDLE
        assert lib.bitnet_bridge_backend_name(stale, name, len(name)) == lib.BITNET_E_INVALID_HANDLE
        assert lib.bitnet_bridge_backend_name(fresh, name, len(name)) == len("reference")
    finally:
        assert lib.bitnet_cpp_free_context(fresh) == 0


# ---- a free that fails keeps the handle (issue 13, item 7a) ----------------------------------


def test_a_failed_free_needs_no_registration_to_be_retried(tiny_model: Path) -> None:
    # The registry used to drop the handle before the free and add it back
    # after a failure; that re-registration allocates (the registry gives its
    # memory back when it empties), and its failure was ignored: the context
    # was then neither freed nor reachable.  An OOM armed beside the failing
    # free made that certain.
    before = bn.live_counters()
    ctx = _init(tiny_model)
    with pytest.warns(fi.NeverHitWarning, match="never hit: 'alloc'"):  # nothing was allocated to keep it
        with fi.inject("free_context=1*fail;alloc=1*oom"):
            assert lib.bitnet_cpp_free_context(ctx) == lib.BITNET_E_CLEANUP
            assert _n_past(ctx) == 0  # still registered, still usable
    assert lib.bitnet_cpp_free_context(ctx) == 0
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "bytes")} == {k: before[k] for k in ("contexts", "bytes")}


def test_a_failed_session_free_keeps_the_session(tiny_model: Path) -> None:
    before = bn.live_counters()
    out = ffi.new("bitnet_session_t **")
    n = ffi.new("int32_t *")
    e = _err()
    assert lib.bitnet_cpp_session_create(out, str(tiny_model).encode(), ffi.NULL, 32, 0, e, len(e)) == 0
    with pytest.warns(fi.NeverHitWarning, match="never hit: 'alloc'"):
        with fi.inject("free_context=1*fail;alloc=1*oom"):
            assert lib.bitnet_cpp_session_free(out[0]) == lib.BITNET_E_CLEANUP
    assert lib.bitnet_cpp_session_tokenize(out[0], b"x", 1, 0, ffi.NULL, 0, n, e, len(e)) == 0
    assert lib.bitnet_cpp_session_free(out[0]) == 0
    after = bn.live_counters()
    assert {k: after[k] for k in ("contexts", "sessions", "bytes")} == {k: before[k] for k in ("contexts", "sessions", "bytes")}


# ---- nothing sleeps under the registry's lock (issue 13, item 9) -----------------------------


def _alloc_hits_of_create(model: Path) -> tuple[int, Any]:
    """How many allocations one create makes (on this thread), and its context."""
    with fi.inject("alloc=off", thread=True) as armed:
        ctx = _init(model)
        return int(armed.hits("alloc")), ctx


def test_a_delayed_registry_growth_does_not_stall_other_sessions(tiny_model: Path) -> None:
    # The registry's table grows when a handle finds it full.  Its growth
    # allocation used to run under the registry's lock, which every call
    # takes to validate its handle: `alloc=...delay(3000)` there made another
    # context's tokenize wait the whole delay.  Registration is the last
    # allocation of a create, so with B the allocations of a create that
    # does not grow, `alloc=B*off->1*delay` delays exactly a growth; creates
    # that do not grow never reach the delay.  Create until one grows.
    made: list[Any] = []
    other = _init(tiny_model)
    try:
        counts = []
        for _ in range(2):  # two creates in a row cannot both grow the table
            hits, ctx = _alloc_hits_of_create(tiny_model)
            made.append(ctx)
            counts.append(hits)
        base = min(counts)
        n = ffi.new("int32_t *")
        e = _err()
        for _ in range(MAX_CREATES_TO_GROW):
            box: dict[str, Any] = {}
            ready = threading.Event()

            def create_delayed() -> None:
                with fi.inject(f"alloc={base}*off->1*delay(2000)", thread=True) as armed:
                    box["armed"] = armed
                    ready.set()
                    made.append(_init(tiny_model))
                    box["fired"] = armed.fired("alloc")

            t = threading.Thread(target=create_delayed)
            t.start()
            ready.wait()
            if not box["armed"].wait_hit("alloc", base + 1, while_alive=t):
                t.join()
                continue  # this create did not grow the table
            # the creating thread sleeps inside the growth: calls must go on
            results: list[int] = []
            u = threading.Thread(target=lambda: results.append(
                lib.bitnet_cpp_tokenize_with_context(other, b"hello", 1, 0, ffi.NULL, 0, n, e, len(e))))
            u.start()
            u.join(timeout=1.0)  # honest bound: the delay is 2 s, a tokenize takes milliseconds
            stalled = u.is_alive()
            u.join()
            t.join()
            assert not stalled, "a call waited for the registry's lock while its growth slept"
            assert results == [0] and box["fired"] == 1
            return
        pytest.fail(f"no create grew the handle registry in {MAX_CREATES_TO_GROW} tries")
    finally:
        for ctx in made:
            assert lib.bitnet_cpp_free_context(ctx) == 0
        assert lib.bitnet_cpp_free_context(other) == 0


# The registry's bound, in a program built from handles.c and the layers
# below it: 2^20 live handles at once (SLOT_BITS in handles.c) is more
# contexts than any process of the suite can hold, but plain objects fill
# it in a moment.
BOUND_PROGRAM = r"""
#include <stdio.h>

#include "handles.c"

int main(void)
{
    static int objs[MAX_SLOTS + 1];
    static const void *handles[MAX_SLOTS + 1];
    for (uint32_t i = 0; i < MAX_SLOTS; i++)
        if (bn_handle_add(&objs[i], KIND_CONTEXT, &handles[i]) != BITNET_OK) {
            printf("add %u failed: %s\n", i, bn_error_message());
            return 1;
        }
    int rc = bn_handle_add(&objs[MAX_SLOTS], KIND_CONTEXT, &handles[MAX_SLOTS]);
    printf("full %d %s\n", rc, bn_error_message());
    /* every handle still names its object, and freeing one makes room */
    int ok = 1;
    for (uint32_t i = 0; i < MAX_SLOTS; i += 4099)
        ok &= bn_handle_remove(handles[i], KIND_CONTEXT) == &objs[i] &&
              bn_handle_add(&objs[i], KIND_CONTEXT, &handles[i]) == BITNET_OK;
    printf("reuse %d\n", ok);
    for (uint32_t i = 0; i < MAX_SLOTS; i++)
        ok &= bn_handle_remove(handles[i], KIND_CONTEXT) == &objs[i];
    bitnet_counters_t c;
    bn_counters_read(&c);
    printf("emptied %d bytes %lld\n", ok, (long long)c.bytes);
    return 0;
}
"""


def test_the_registry_refuses_a_handle_past_its_bound_and_recovers(tmp_path: Path) -> None:
    import subprocess

    from ..native_builds import build_program

    exe = build_program(tmp_path, BOUND_PROGRAM, "handle_bound")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == (
        f"full {lib.BITNET_E_OOM} too many live handles: the bridge holds at most 1048576 contexts and sessions "
        "at once; free the ones no longer needed"
    )
    assert lines[1:] == ["reuse 1", "emptied 1 bytes 0"]  # the table is given back when idle
