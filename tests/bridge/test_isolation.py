"""isolation="process": a session's library in a worker process the bridge owns.

The misbehaving libraries are real: tests/broken_backend.c wraps the bundled
reference library without the host hook (so nothing of the bridge reaches
it: no deadline, no cancel), with one bug compiled in (tests/native_builds.py
builds them).  Each test checks the caller's outcome and that nothing is left
behind: no child process (``/proc/<pid>`` gone, ``os.waitpid`` ECHILD), the
live counters back to baseline (the plugin's leak check also runs).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import counters, settings
from pytest_bitnet.bridge._native import LLAMA, bundled_library
from pytest_bitnet.bridge.isolation import client

from ..native_builds import build_broken_backend

# A stopped call must end within this of its deadline plus the grace: the
# kill and the reap, generous for a loaded 2-core machine (measured figures
# are in docs/explanation/performance.md; this is a bound, not a measurement).
LATE = 1.0

# Under the sanitizer pass (LD_PRELOAD of libasan, abort_on_error=1) ASan's
# own SIGSEGV handler reports a wild write and aborts.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_CPP_LIBDIR", "BITNET_CPP_DIR", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK",
                "BITNET_ISOLATION"):
        monkeypatch.delenv(var, raising=False)


def _broken(tmp_path_factory: pytest.TempPathFactory, bug: str) -> Path:
    real = bundled_library()
    if real is None:
        pytest.skip("no bundled library")
    return build_broken_backend(tmp_path_factory.mktemp(bug.lower()), bug, real)


@pytest.fixture(scope="module")
def sleepy_tokenize(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "SLEEP_TOKENIZE")


@pytest.fixture(scope="module")
def sleepy_load(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "SLEEP_LOAD")


@pytest.fixture(scope="module")
def segv_eval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "SEGV_EVAL")


@pytest.fixture(scope="module")
def abort_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "ABORT_FREE")


@pytest.fixture(scope="module")
def stderr_exit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "STDERR_EXIT")


def assert_gone(pid: int) -> None:
    """The worker is reaped: no process, no zombie, not our child any more."""
    assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still exists"
    with pytest.raises(ChildProcessError) as exc:
        os.waitpid(pid, os.WNOHANG)
    assert exc.value.errno == errno.ECHILD
    assert pid not in [w.pid for w in client.live_workers()]


def leak_counters() -> dict[str, int]:
    c = bn.live_counters()
    return {k: c[k] for k in counters.LEAK_COUNTERS}


# ---- same behaviour -------------------------------------------------------------------------


needs_llama = pytest.mark.skipif(LLAMA.adapter is None, reason=f"llama.cpp not available: {LLAMA.reason}")
BACKENDS = ["reference", "dlopen", pytest.param("llama", marks=needs_llama)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_bit_identical_to_in_process(backend: str, tiny_model: Path) -> None:
    prompt = "the same tokens, the same logits"
    with bn.BitnetSession.create(tiny_model, backend=backend) as s:
        toks = s.tokenize(prompt)
        logits = s.evaluate(toks[:5])
        more = s.evaluate(toks[5:], seq_id=0)
        other = s.evaluate(toks[:3], seq_id=1)
        text = s.detokenize_bytes(toks)
        n_past = s.n_past()
        caps = s.capabilities
        info = dict(s.backend_info)
    with bn.BitnetSession.create(tiny_model, backend=backend, isolation="process") as iso:
        assert iso.isolated and not s.isolated
        pid = iso.pid
        assert iso.backend_info["isolation"] == f"process (pid {pid})"
        assert info["isolation"] == "none"
        itoks = iso.tokenize(prompt)
        assert itoks.dtype == np.int32 and itoks.flags.writeable
        np.testing.assert_array_equal(itoks, toks)
        ilogits = iso.evaluate(itoks[:5])
        assert ilogits.dtype == np.float32 and ilogits.shape == logits.shape
        assert ilogits.tobytes() == logits.tobytes()  # bit-identical
        assert iso.evaluate(itoks[5:]).tobytes() == more.tobytes()
        assert iso.evaluate(itoks[:3], seq_id=1).tobytes() == other.tobytes()
        assert iso.detokenize_bytes(itoks) == text
        assert iso.n_past() == n_past
        assert iso.capabilities == caps
        assert (iso.n_ctx, iso.n_vocab) == (s.n_ctx, s.n_vocab)
        assert {k: v for k, v in iso.backend_info.items() if k != "isolation"} == \
               {k: v for k, v in info.items() if k != "isolation"}
        iso.reset(0)
        assert iso.n_past() == 0
    assert iso.closed
    assert_gone(pid)


def test_per_call_functions_are_identical_and_leave_nothing(tiny_model: Path) -> None:
    before = leak_counters()
    toks = bn.tokenize(tiny_model, "per call")
    assert bn.tokenize(tiny_model, "per call", isolation="process").tobytes() == toks.tobytes()
    assert bn.evaluate(tiny_model, toks, isolation="process").tobytes() == bn.evaluate(tiny_model, toks).tobytes()
    assert bn.detokenize(tiny_model, toks, isolation="process") == bn.detokenize(tiny_model, toks)
    assert client.live_workers() == []
    assert leak_counters() == before


def _same_error(a: errors.BitnetError, b: errors.BitnetError) -> None:
    def timeless(text: Any) -> Any:  # how late a deadline was found passed differs between runs
        return re.sub(r"passed [0-9.]+ ms ago", "passed N ms ago", text) if isinstance(text, str) else text

    assert type(a) is type(b)
    assert timeless(str(a)) == timeless(str(b))
    fa, fb = dataclasses.asdict(a.context), dataclasses.asdict(b.context)
    for f in ("time",):  # when is not where
        fa.pop(f), fb.pop(f)
    assert {k: timeless(v) for k, v in fa.items()} == {k: timeless(v) for k, v in fb.items()}


def test_errors_are_the_same_class_message_phase_and_context(tiny_model: Path, tmp_path: Path) -> None:
    with bn.BitnetSession.create(tiny_model) as s, bn.BitnetSession.create(tiny_model, isolation="process") as iso:
        for call in (lambda x: x.evaluate([10**6]), lambda x: x.evaluate([]), lambda x: x.evaluate([1] * 600),
                     lambda x: x.evaluate([1, 2], timeout=0)):
            with pytest.raises(errors.BitnetError) as want:
                call(s)
            with pytest.raises(errors.BitnetError) as got:
                call(iso)
            _same_error(got.value, want.value)
        assert got.value.context.phase is not None
        iso.tokenize("still usable after errors")  # a library's own error keeps the worker
    missing = tmp_path / "missing.gguf"
    with pytest.raises(errors.ModelLoadError) as want:
        bn.BitnetSession.create(missing)
    with pytest.raises(errors.ModelLoadError) as got:
        bn.BitnetSession.create(missing, isolation="process")
    _same_error(got.value, want.value)
    assert client.live_workers() == []


def test_arguments_are_refused_before_a_worker_starts(tiny_model: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="'none', 'process'"):
        bn.BitnetSession.create(tiny_model, isolation="thread")
    with pytest.raises(errors.InvalidArgument, match="n_ctx"):
        bn.BitnetSession.create(tiny_model, n_ctx=-1, isolation="process")
    with bn.BitnetSession.create(tiny_model, isolation="process") as iso:
        with pytest.raises(errors.InvalidArgument, match="NUL"):
            iso.tokenize("a\0b")
        with pytest.raises(errors.Unsupported, match="worker process"):
            iso.handle
        with pytest.raises(errors.InvalidArgument, match="evaluate: gpu must be True or False, got 'yes'"):
            iso.evaluate([1, 2], gpu="yes")  # type: ignore[arg-type]
        assert iso.n_past() == 0  # refused here: the worker never saw it
    assert client.live_workers() == []


# ---- a worker that never says hello -----------------------------------------------------------
#
# The worker imports numpy (through the bridge's call helpers) before its
# hello.  A `numpy` earlier on its PYTHONPATH that fails, or never returns,
# is a real environment the worker can be started in: a broken or
# half-installed dependency of the interpreter it runs.


def _shadow_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    pkg = tmp_path / "shadow" / "numpy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    # the worker's environment is this process's (settings.worker_environment); this
    # process has numpy imported already, so only workers see the shadow
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(pkg.parent), os.environ.get("PYTHONPATH")) if p))


def test_a_worker_that_dies_while_starting_is_backend_crashed(tiny_model: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _shadow_numpy(tmp_path, monkeypatch, "raise ImportError('numpy is broken in this environment')\n")
    before = leak_counters()
    with pytest.raises(errors.BackendCrashed) as exc:
        bn.BitnetSession.create(tiny_model, isolation="process")
    e = exc.value
    assert e.exit_code == 1 and e.signal is None and e.operation == "start"
    assert "while starting, before serving anything" in str(e)
    assert f"check that {sys.executable} can import pytest_bitnet" in str(e)
    assert "ImportError: numpy is broken in this environment" in e.stderr_tail  # the worker's own words
    assert "numpy is broken in this environment" in str(e)
    assert client.live_workers() == []
    assert leak_counters() == before


def test_a_worker_that_never_says_hello_is_stopped(tiny_model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _shadow_numpy(tmp_path, monkeypatch, "import threading\nthreading.Event().wait()  # an import that never returns\n")
    monkeypatch.setattr(client, "STARTUP_TIMEOUT", 1.0)  # the bound on start-up, not a wait of the test's
    before = leak_counters()
    with pytest.raises(errors.OperationTimeout) as exc:
        bn.BitnetSession.create(tiny_model, isolation="process")
    e = exc.value
    assert e.context.operation == "start" and e.duration == 1.0
    assert e.context.parameters == {"startup_timeout": 1.0}
    assert "did not start within 1 s and was stopped" in str(e) and "isolation='none'" in str(e)
    assert client.live_workers() == []  # killed and reaped
    assert leak_counters() == before


def test_log_lines_reach_the_callers_logging(tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pytest_bitnet")
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"not a gguf file at all")

    def lines() -> list[tuple[str, int, str]]:
        # the native prefix carries the time: compare what follows it
        out = [(r.name, r.levelno, re.sub(r"^\[[^]]*\] ", "", r.getMessage()), getattr(r, "bitnet_component", None))
               for r in caplog.records if r.name == "pytest_bitnet.native"]
        caplog.clear()
        return out

    with pytest.raises(errors.ModelLoadError):
        bn.BitnetSession.create(bad)
    want = lines()
    assert want, "the in-process create logs its failure"
    with pytest.raises(errors.ModelLoadError):
        bn.BitnetSession.create(bad, isolation="process")
    assert lines() == want


@needs_llama
def test_fallback_warnings_reach_the_caller(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")  # the worker's environment is this one
    for isolation in ("none", "process"):
        with bn.BitnetSession.create(tiny_model, isolation=isolation) as s:
            with pytest.warns(errors.OptionalSymbolMissing, match="tokenize served by fallback:") as caught:
                s.tokenize("fallback")
            assert s.backend_info["tokenize"].startswith("fallback:")
        if isolation == "none":
            want = [str(w.message) for w in caught]
    assert [str(w.message) for w in caught] == want


def test_settings_and_env_choose_isolation(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITNET_ISOLATION", "process")
    with bn.BitnetSession.create(tiny_model) as s:
        assert s.isolated
    with bn.BitnetSession.create(tiny_model, isolation="none") as s:  # the call's wins
        assert not s.isolated
    previous = settings.configure(isolation="none")  # configure's beats the environment
    try:
        with bn.BitnetSession.create(tiny_model) as s:
            assert not s.isolated
    finally:
        settings.restore(previous)
    monkeypatch.setenv("BITNET_ISOLATION", "sandbox")
    with pytest.raises(errors.InvalidArgument, match="BITNET_ISOLATION"):
        bn.BitnetSession.create(tiny_model)
    assert "BITNET_ISOLATION" in settings.ENV_VARS


def test_diagnostics_say_where_sessions_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_bitnet.bridge.diagnostics import diagnostics, format_text

    assert diagnostics()["isolation"] == "none"
    monkeypatch.setenv("BITNET_ISOLATION", "process")
    report = diagnostics()
    assert report["isolation"] == "process" and "BITNET_ISOLATION" in report["env"]
    assert "isolation       process (each session's library in a worker process" in format_text(report)
    monkeypatch.setenv("BITNET_ISOLATION", "thread")
    report = diagnostics()
    assert not report["ok"] and any("invalid isolation 'thread' from BITNET_ISOLATION" in e for e in report["errors"])


# ---- hard deadlines -------------------------------------------------------------------------


def test_a_call_the_library_will_not_end_stops_at_the_deadline(sleepy_tokenize: Path, tiny_model: Path) -> None:
    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=sleepy_tokenize, isolation="process")
    pid = s.pid
    assert leak_counters()["contexts"] == before["contexts"] + 1  # counted while open
    t0 = time.monotonic()
    with pytest.raises(errors.OperationTimeout) as exc:
        s.tokenize("hello", timeout=0.2)
    took = time.monotonic() - t0
    assert 0.2 <= took < 0.2 + client.GRACE + LATE, took
    e = exc.value
    assert "its isolated worker process" in str(e) and "stopped at the deadline" in str(e)
    assert str(sleepy_tokenize) in str(e)  # the library
    assert e.context.operation == "tokenize" and e.context.phase == "QUERY PHASE"
    assert e.context.parameters["timeout"] == 0.2 and e.duration == 0.2
    assert s.closed
    assert_gone(pid)
    assert leak_counters() == before
    with pytest.raises(errors.InferenceError, match="its worker was stopped at the deadline; create a new session|"
                                                    "worker was stopped at the deadline.*create a new session"):
        s.tokenize("again")
    s.close()  # nothing left to do


@pytest.fixture(scope="module")
def sleepy_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "SLEEP_FREE")


def test_a_per_call_function_the_library_will_not_end_stops_at_the_deadline(sleepy_tokenize: Path,
                                                                             tiny_model: Path) -> None:
    before = leak_counters()
    with pytest.raises(errors.OperationTimeout) as exc:
        bn.tokenize(tiny_model, "hello", backend="dlopen", library_path=sleepy_tokenize, isolation="process", timeout=0.2)
    e = exc.value
    assert e.context.operation == "tokenize (per-call)" and e.duration == 0.2
    assert "its isolated worker process" in str(e) and "stopped at the deadline" in str(e)
    assert "nothing is left behind" in str(e) and str(sleepy_tokenize) in str(e)
    assert client.live_workers() == []
    assert leak_counters() == before


@pytest.mark.parametrize("how", ["close(timeout=0.3)", "session timeout 0.3"])
def test_close_has_a_hard_deadline(how: str, sleepy_free: Path, tiny_model: Path) -> None:
    # a free that never returns: the worker is stopped, which frees all it held
    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=sleepy_free, isolation="process",
                                timeout=0.3 if how.startswith("session") else None)
    pid = s.pid
    t0 = time.monotonic()
    with pytest.raises(errors.OperationTimeout) as exc:
        s.close(timeout=0.3) if how.startswith("close") else s.close()
    assert time.monotonic() - t0 < 0.3 + client.GRACE + LATE
    assert exc.value.context.operation == "close" and "stopping the worker freed everything" in str(exc.value)
    assert s.closed
    s.close()  # nothing left to do
    assert_gone(pid)
    assert leak_counters() == before


def test_model_loading_has_a_hard_deadline(sleepy_load: Path, tiny_model: Path) -> None:
    before = leak_counters()
    t0 = time.monotonic()
    with pytest.raises(errors.OperationTimeout) as exc:
        bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=sleepy_load, isolation="process", timeout=0.3)
    assert time.monotonic() - t0 < 0.3 + client.GRACE + LATE + client.STARTUP_TIMEOUT  # start-up is not the call's
    assert exc.value.context.operation == "create"
    assert "nothing is left behind" in str(exc.value)
    assert client.live_workers() == []
    assert leak_counters() == before


def test_a_library_that_ignores_cancel_is_stopped_at_the_deadline(sleepy_tokenize: Path, tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=sleepy_tokenize, isolation="process")
    pid = s.pid
    errs: list[BaseException] = []

    def call() -> None:
        try:
            s.tokenize("hello", timeout=0.5)
        except BaseException as exc:  # noqa: BLE001
            errs.append(exc)

    t = threading.Thread(target=call)
    t.start()
    _wait_in_call(s)
    s.cancel()  # reaches the worker; the library does not look
    with pytest.raises(errors.ThreadSafetyError, match="in use by another thread"):
        s.tokenize("second caller")
    t.join(0.5 + client.GRACE + LATE + 1.0)
    assert not t.is_alive()
    assert len(errs) == 1 and isinstance(errs[0], errors.OperationTimeout)
    assert_gone(pid)


def _wait_in_call(s: Any) -> None:
    # The worker publishes its phase on the page both processes map: wait
    # (bounded) until it says the call is in the library.
    for _ in range(2000):
        if s._worker.phase() is not None:
            return
        time.sleep(0.005)
    raise AssertionError("the worker never entered the call")


def test_keyboard_interrupt_during_a_call_stops_the_worker(sleepy_tokenize: Path, tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=sleepy_tokenize, isolation="process")
    pid = s.pid
    main = threading.get_ident()

    def interrupt() -> None:
        _wait_in_call(s)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        s.tokenize("hello", timeout=float("inf"))  # nothing but the interrupt ends it
    t.join()
    assert s.closed
    assert_gone(pid)
    with pytest.raises(errors.InferenceError, match="interrupted"):
        s.tokenize("again")


# ---- crash containment ----------------------------------------------------------------------


def test_a_segfault_in_evaluate_is_backend_crashed(segv_eval: Path, tiny_model: Path) -> None:
    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=segv_eval, isolation="process")
    pid = s.pid
    toks = s.tokenize("crash here")  # the rest of the library works
    with pytest.raises(errors.BackendCrashed) as exc:
        s.evaluate(toks)
    e = exc.value
    want = "SIGABRT" if SANITIZED else "SIGSEGV"
    assert e.signal_name == want and e.signal == getattr(signal, want) and e.exit_code is None
    assert e.operation == "evaluate" and e.phase == "FILL PHASE"
    assert want in str(e) and "evaluate (FILL PHASE)" in str(e) and str(segv_eval) in str(e)
    assert isinstance(e, errors.BitnetError)
    assert s.closed
    assert_gone(pid)
    assert leak_counters() == before
    with pytest.raises(errors.InferenceError, match="create a new session"):
        s.evaluate(toks)


def test_an_abort_in_free_is_backend_crashed_and_the_session_is_closed(abort_free: Path, tiny_model: Path) -> None:
    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=abort_free, isolation="process")
    pid = s.pid
    with pytest.raises(errors.BackendCrashed) as exc:
        s.close()
    assert exc.value.signal_name == "SIGABRT" and exc.value.operation == "close"
    assert s.closed
    s.close()  # idempotent: nothing is left
    assert_gone(pid)
    assert leak_counters() == before


def test_an_exit_names_the_code_and_quotes_stderr(stderr_exit: Path, tiny_model: Path) -> None:
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=stderr_exit, isolation="process")
    pid = s.pid
    with pytest.raises(errors.BackendCrashed) as exc:
        s.tokenize("hello")
    e = exc.value
    assert e.exit_code == 3 and e.signal is None and e.signal_name is None
    assert "exited with status 3" in str(e)
    assert e.stderr_tail.splitlines()[-3:] == [
        "broken_backend: tokenize of 5 bytes", "broken_backend: the vocabulary is gone", "broken_backend: giving up"]
    assert "    broken_backend: giving up" in str(e)  # quoted in the message
    assert e.operation == "tokenize"
    assert_gone(pid)


def test_a_per_call_crash_is_contained_too(segv_eval: Path, tiny_model: Path) -> None:
    with pytest.raises(errors.BackendCrashed) as exc:
        bn.evaluate(tiny_model, [1, 2, 3], backend="dlopen", library_path=segv_eval, isolation="process")
    assert exc.value.operation == "evaluate (per-call)"
    assert client.live_workers() == []


# ---- nothing left behind --------------------------------------------------------------------


@pytest.mark.bitnet_allow_leaks  # dropping it is the point (the leak check names it: see the last test)
def test_a_dropped_session_is_reaped_by_its_finalizer(tiny_model: Path) -> None:
    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, isolation="process")
    pid = s.pid
    with pytest.warns(ResourceWarning, match="not closed"):
        del s
        import gc

        gc.collect()
    assert_gone(pid)
    assert leak_counters() == before


def test_the_worker_dies_with_its_parent(tiny_model: Path, tmp_path: Path) -> None:
    # A parent killed with SIGKILL runs no atexit, no finalizer: the kernel
    # ends the worker (PR_SET_PDEATHSIG).
    script = (
        "import sys, pytest_bitnet as bn\n"
        f"s = bn.BitnetSession.create({str(tiny_model)!r}, isolation='process')\n"
        "print(s.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert Path(f"/proc/{worker}").exists()
    parent.kill()
    parent.wait()
    # not our child: wait (bounded) for init to reap it
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{worker}").exists()


def test_a_session_outlives_the_thread_that_created_it(tiny_model: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: a worker forked
    # by a short-lived thread would die with it.
    made: list[bn.BitnetSession] = []
    t = threading.Thread(target=lambda: made.append(bn.BitnetSession.create(tiny_model, isolation="process")))
    t.start()
    t.join()
    [s] = made
    with s:
        for _ in range(3):  # give a parent-death signal time to land: it is sent at the thread's exit
            assert len(s.tokenize("still here")) > 1
            assert Path(f"/proc/{s.pid}").exists()


def test_exit_reaps_an_unclosed_worker(tiny_model: Path) -> None:
    script = (
        "import pytest_bitnet as bn\n"
        f"s = bn.BitnetSession.create({str(tiny_model)!r}, isolation='process')\n"
        "print(s.pid, flush=True)\n"
        "import builtins; builtins.keep = s\n"  # alive until the interpreter ends
    )
    out = subprocess.run([sys.executable, "-W", "ignore::ResourceWarning", "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    worker = int(out.stdout.split()[0])
    assert not Path(f"/proc/{worker}").exists()


def test_the_leak_check_registry_names_an_isolated_session(tiny_model: Path) -> None:
    previous = counters.track_creation(True)
    try:
        m = counters.watch()
        s = bn.BitnetSession.create(tiny_model, isolation="process")
        [rec] = counters.tracked(m)
        assert rec.state == counters.OPEN and "isolated" in rec.what
        assert rec.footprint["contexts"] == 1
        assert any("test_the_leak_check_registry" in f.name for f in rec.stack)
        s.close()
        [rec] = counters.tracked(m)
        assert rec.state == counters.CLOSED
        counters.unwatch(m)
    finally:
        counters.track_creation(previous)


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _broken(tmp_path_factory, "LEAK_ON_TOKENIZE_ERROR")


@pytest.mark.bitnet_allow_leaks  # the library leaks on purpose; the test checks that it is counted
def test_what_the_worker_still_holds_at_close_stays_counted(leaky: Path, tiny_model: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import fault_inject as fi

    before = leak_counters()
    s = bn.BitnetSession.create(tiny_model, backend="dlopen", library_path=leaky, isolation="process")
    with fi.inject("tokenize.step=fail"), pytest.raises(errors.InferenceError):
        s.tokenize("the library forgets its scratch context on this error path")
    pid = s.pid
    with caplog.at_level(logging.WARNING, logger="pytest_bitnet"):
        s.close()
    assert_gone(pid)
    leaked = counters.delta(before, leak_counters())
    try:
        # in process the scratch context would stay alive and counted: so it does here
        assert leaked.get("contexts", 0) >= 1, leaked
        assert any("leaked them" in r.getMessage() and str(leaky) in r.getMessage() for r in caplog.records)
    finally:
        for key in [k for k in counters._remote if isinstance(k, tuple) and k[:2] == ("leftover", pid)]:
            counters.remove_remote(key)  # leave this process's counters as the test found them
    assert leak_counters() == before
