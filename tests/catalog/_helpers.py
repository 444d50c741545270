"""Helpers the catalog tests share: the C ABI (bitnet.h) seen through cffi,
and a session kept busy in another thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fault_inject as fi
from pytest_bitnet import BitnetSession
from pytest_bitnet.bridge.abi import ffi, lib, raise_for_code

#: A value no real token id or logit takes: whatever still holds it was not written.
CANARY = 0x7EADBEEF


def err_buffer(size: int = 512) -> Any:
    """A C error buffer (char[size]) for the err/err_len arguments."""
    return ffi.new("char[]", size)


def guarded(ctype: str, n: int, guard: int, fill: Any) -> Any:
    """A C array of n + guard elements, all set to fill.

    Pass n as the capacity: the guard elements after it must still hold
    fill after the call, or the callee wrote past what it was given.
    """
    buf = ffi.new(f"{ctype}[]", n + guard)
    for i in range(n + guard):
        buf[i] = fill
    return buf


def raise_if_failed(rc: int, operation: str, err: Any) -> None:
    """Raises what the Python layer raises for native code rc (nothing for 0)."""
    if rc:
        raise_for_code(rc, operation, err)


@contextlib.contextmanager
def native_context(model: Path, n_ctx: int = 64) -> Iterator[Any]:
    """A raw ``bitnet_context_t *`` from bitnet_cpp_init_context, freed on exit."""
    out = ffi.new("bitnet_context_t **")
    err = err_buffer()
    raise_if_failed(lib.bitnet_cpp_init_context(out, str(model).encode(), n_ctx, 0, err, len(err)), "create", err)
    try:
        yield out[0]
    finally:
        lib.bitnet_cpp_free_context(out[0])


@contextlib.contextmanager
def evaluating_in_another_thread(session: BitnetSession, tokens: Any) -> Iterator[dict[str, Any]]:
    """Runs session.evaluate(tokens) in another thread, slowed by
    ``eval.step=delay(50)``; the block runs while that call is inside the
    native code.  Yields a dict that holds, once the block is left, the
    thread's "logits" or its "error"."""
    outcome: dict[str, Any] = {}

    def evaluate() -> None:
        try:
            outcome["logits"] = session.evaluate(tokens)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    with fi.inject("eval.step=delay(50)") as armed:
        busy = threading.Thread(target=evaluate, name="busy-evaluate")
        busy.start()
        deadline = time.monotonic() + 10
        while armed.hits("eval.step") == 0 and busy.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)  # until the thread is inside its first layer
        try:
            yield outcome
        finally:
            busy.join()
