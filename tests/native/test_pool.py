"""The context's thread pool (native/reference/pool.c) across fork().

A fork()ed child has only the thread that forked: the pool's workers stay in
the parent.  A session made in the parent and used in the child must still
answer (single-threaded there), with the parent's logits, within its
deadline, and close cleanly; the parent's pool is untouched.  Every child
here is watched by the parent with a bound, so a regression fails the test
instead of hanging the run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import pytest_bitnet as bn

# Long enough for a loaded 2-core machine, short against the hang it guards.
CHILD_BOUND_S = 60.0
# 8 tokens: every matmul of the tiny model is above the pool's parallel threshold.
TOKENS = [1, 17, 300, 45, 2, 99, 511, 260]
LEAK_KEYS = ("contexts", "sessions", "models", "bytes")


# dlopen: the engine (and its pool) of the loaded library, a copy of its own
@pytest.fixture(params=["reference", "dlopen"])
def pooled(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[bn.BitnetSession, np.ndarray, dict[str, int]]]:
    """A session with two pool threads, made in this (the parent) process,
    its logits for TOKENS, and the counters from before it was created."""
    monkeypatch.setenv("BITNET_NUM_THREADS", "2")  # read by the pool when the context is created
    before = bn.live_counters()
    s = bn.BitnetSession.create(tiny_model, n_ctx=64, timeout=2.0, backend=request.param)
    try:
        expected = s.evaluate(TOKENS)
        s.reset()
        yield s, expected, {k: before[k] for k in LEAK_KEYS}
    finally:
        s.close()


def in_child(session: bn.BitnetSession) -> dict[str, Any]:
    """What a child reports: the logits, how long evaluate took, and the
    counters after closing the inherited session."""
    t0 = time.monotonic()
    logits = session.evaluate(TOKENS)  # the session's timeout: 2 s
    seconds = time.monotonic() - t0
    session.close()
    after = bn.live_counters()
    return {"logits": logits, "seconds": seconds, "counters": {k: after[k] for k in LEAK_KEYS}}


def run_forked(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """fn() in an os.fork() child; its result pickled back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never return into pytest from the child
        code = 0
        try:
            os.close(r)
            try:
                result: Any = fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = {"error": f"{type(exc).__name__}: {exc}"}
            data = pickle.dumps(result)
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks, end = [], time.monotonic() + CHILD_BOUND_S
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child gave no result within {CHILD_BOUND_S} s: it hangs")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    result = pickle.loads(b"".join(chunks))
    assert "error" not in result, result["error"]
    return result


def check(result: dict[str, Any], expected: np.ndarray, baseline: dict[str, int]) -> None:
    np.testing.assert_array_equal(result["logits"], expected)
    assert result["seconds"] < 2.0 + 1.0  # answered within its deadline, not by timing out
    assert result["counters"] == baseline  # the close in the child freed everything it inherited


def test_parent_session_used_in_os_fork_child(pooled: tuple[bn.BitnetSession, np.ndarray, dict[str, int]]) -> None:
    s, expected, baseline = pooled
    check(run_forked(lambda: in_child(s)), expected, baseline)
    # the parent's pool still runs on its own threads, with the same result
    np.testing.assert_array_equal(s.evaluate(TOKENS), expected)


def test_parent_session_used_in_multiprocessing_fork_child(
    pooled: tuple[bn.BitnetSession, np.ndarray, dict[str, int]],
) -> None:
    s, expected, baseline = pooled
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def target() -> None:  # runs in the child: a fork start method pickles nothing
        try:
            send.send(in_child(s))
        except BaseException as exc:  # noqa: BLE001
            send.send({"error": f"{type(exc).__name__}: {exc}"})

    child = ctx.Process(target=target)
    child.start()
    try:
        if not receive.poll(CHILD_BOUND_S):
            pytest.fail(f"the multiprocessing child gave no result within {CHILD_BOUND_S} s: it hangs")
        result = receive.recv()
    finally:
        child.kill()
        child.join()
    assert "error" not in result, result["error"]
    check(result, expected, baseline)


def test_a_child_of_a_child_runs_single_threaded_too(pooled: tuple[bn.BitnetSession, np.ndarray, dict[str, int]]) -> None:
    s, expected, baseline = pooled

    def grandchild() -> dict[str, Any]:
        s.evaluate(TOKENS[:4])  # the child uses the pool first
        s.reset()
        return run_forked(lambda: in_child(s))

    check(run_forked(grandchild), expected, baseline)


# ---- a worker thread that cannot start ----------------------------------------------------------

# In a fresh interpreter: a stack limit of 1 TiB, which glibc takes as the
# size of every new thread's stack, so the pool's pthread_create cannot map
# one (EAGAIN) while the process itself runs as before.  glibc reads the
# limit at startup: the child sets it, then execs the interpreter that
# creates the session.
_NO_THREAD_STACKS = r"""
import os, resource, sys
resource.setrlimit(resource.RLIMIT_STACK, (1 << 40, resource.getrlimit(resource.RLIMIT_STACK)[1]))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
"""
_CREATE = r"""
import json, sys
import pytest_bitnet as bn
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
try:
    with bn.BitnetSession.create(sys.argv[1], n_ctx=16) as s:
        result = {"tokens": s.tokenize("hi").tolist()}
except bn.BitnetError as exc:
    result = {"class": type(exc).__name__, "message": str(exc), "code": exc.context.native_code}
live = bn.live_counters()
result["live"] = {k: live[k] for k in LEAK_COUNTERS}
print(json.dumps(result))
"""


@pytest.mark.parametrize("threads", ["2", "1"])
def test_a_worker_thread_that_cannot_start_fails_the_create_cleanly(tiny_model: Path, threads: str) -> None:
    env = dict(os.environ, BITNET_NUM_THREADS=threads, OPENBLAS_NUM_THREADS="1")  # numpy's pool, too, starts none
    proc = subprocess.run([sys.executable, "-c", _NO_THREAD_STACKS, _CREATE, str(tiny_model)], env=env,
                          capture_output=True, text=True, timeout=CHILD_BOUND_S)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert set(result["live"].values()) == {0}, result  # the threads already started are joined, all freed
    if threads == "1":  # the message's advice: without workers the same process runs
        assert result["tokens"][0] == 1, result
        return
    assert result["class"] == "InternalError", result
    assert result["code"] == -10
    assert "could not start worker thread 1 of 1; set BITNET_NUM_THREADS=1 to run without workers" in result["message"]
