"""The caller's end of a worker: start it, call it with a hard deadline,
stop and reap it, keep the tail of what it wrote to stderr.

A call waits for its reply until the call's deadline plus :data:`GRACE`.
The grace lets a library that honours deadlines answer first, in the worker,
with its own ``OperationTimeout`` (the session then stays usable, as in
process); a library that does not answer by then is stopped: the worker is
killed with SIGKILL and reaped, and the call raises ``OperationTimeout``.
What the caller sees past the deadline is therefore GRACE plus the kill and
the reap (measured on the 2-core machine of this project: see
docs/explanation/performance.md, "Process isolation").

A worker that dies during a call (EOF on its reply pipe) is reaped and
reported as ``BackendCrashed`` with its signal or exit code, the operation,
the phase (read from the status page the worker writes), and the tail of its
stderr (drained by a thread into a bounded ring of lines, and passed on to
the caller's stderr as it comes, so the library's words are where they were
in process).

Nothing is left behind: every worker is reaped on close, timeout and crash,
killed on KeyboardInterrupt (or any other exception) during a call, killed
and reaped by its owner's finalizer and at interpreter exit, and killed by
the kernel when this process dies (PR_SET_PDEATHSIG, set by the worker).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import mmap
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Final

from .. import errors, settings
from . import protocol as P

__all__ = ["GRACE", "STARTUP_TIMEOUT", "STDERR_LINES", "Worker", "WorkerDied", "WorkerStopped", "live_workers"]

#: Seconds a call's reply may come after its deadline before the worker is
#: stopped: time for a worker whose library honours the deadline to report
#: the timeout itself (and keep the session).
GRACE: Final = 0.1
#: Seconds a new worker has to start (interpreter, numpy, the bridge) and say
#: hello.  Not part of any call's deadline: start-up is paid once per session.
STARTUP_TIMEOUT: Final = 60.0
#: Seconds a worker told to exit may take before it is killed.
EXIT_TIMEOUT: Final = 5.0
#: Lines of the worker's stderr kept for a BackendCrashed.
STDERR_LINES: Final = 20

log = logging.getLogger("pytest_bitnet")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding pytest_bitnet/

# Every worker not reaped yet, for the exit hook (weak: a worker's owner's
# finalizer reaps it; this catches what is still alive at exit).
_live: weakref.WeakSet[Worker] = weakref.WeakSet()


def live_workers() -> list[Worker]:
    """Workers started and not reaped yet (for tests and diagnostics)."""
    return [w for w in list(_live) if w.returncode is None]


class WorkerDied(Exception):
    """The worker exited or was killed by a signal during a request."""

    def __init__(self, returncode: int, phase: str | None, stderr_tail: str) -> None:
        super().__init__(returncode)
        self.returncode, self.phase, self.stderr_tail = returncode, phase, stderr_tail


class WorkerStopped(Exception):
    """The caller stopped the worker: its reply did not come by the deadline."""

    def __init__(self, waited: float, phase: str | None, stderr_tail: str) -> None:
        super().__init__(waited)
        self.waited, self.phase, self.stderr_tail = waited, phase, stderr_tail


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_death(returncode: int) -> tuple[int | None, str | None, int | None, str]:
    """(signal, signal_name, exit_code, words) for a worker's return code."""
    if returncode < 0:
        signum = -returncode
        name = _signal_name(signum)
        try:
            what = signal.strsignal(signum) or name
        except ValueError:
            what = name
        return signum, name, None, f"was killed by {name} ({what})"
    return None, None, returncode, f"exited with status {returncode}"


class Worker:
    """One worker process and its pipes.  Calls are serialised by the owner."""

    __slots__ = ("proc", "pid", "req", "rep", "ctl", "page_fd", "page", "tail", "_tail_lock", "_reader", "returncode",
                 "on_fault", "crash_note", "reader", "poller", "__weakref__")

    def __init__(self, env: dict[str, str] | None = None) -> None:
        """Starts a worker and waits (up to STARTUP_TIMEOUT) for its hello.

        Raises BackendCrashed when it dies first, OperationTimeout when it
        does not say hello in time.
        """
        self.returncode: int | None = None
        self.on_fault: Callable[[Any], Any] | None = None  # decides a FAULT_HIT (faults across the boundary)
        self.crash_note: str | None = None  # set by on_fault when it decided a `crash`: the death was asked for
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._tail_lock = threading.Lock()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        # the status page (and the logits after it), shared with the worker
        page_fd = os.memfd_create("bitnet-isolation", 0) if hasattr(os, "memfd_create") else _tmpfile_fd()
        os.ftruncate(page_fd, P.STATUS_SIZE)
        child_fds = (req_r, rep_w, ctl_r, page_fd)
        environ = settings.worker_environment() if env is None else dict(env)
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, environ.get("PYTHONPATH", "")) if p)
        try:
            # Started from one long-lived thread: the kernel's parent-death
            # signal (PR_SET_PDEATHSIG, set by the worker) fires when the
            # *thread* that forked it ends, so a worker forked by a short-lived
            # thread would die with that thread, its session still in use.
            self.proc = _spawner().submit(
                subprocess.Popen,
                [sys.executable, "-m", "pytest_bitnet.bridge.isolation.worker", "--parent", str(os.getpid()),
                 "--fds", ",".join(map(str, child_fds))],
                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=child_fds, env=environ, close_fds=True,
            ).result()
        except BaseException:
            for fd in (req_r, req_w, rep_r, rep_w, ctl_r, ctl_w, page_fd):
                os.close(fd)
            raise
        for fd in (req_r, rep_w, ctl_r):
            os.close(fd)
        self.pid = self.proc.pid
        self.req, self.rep, self.ctl, self.page_fd = req_w, rep_r, ctl_w, page_fd
        self.page = mmap.mmap(page_fd, P.STATUS_SIZE)
        self.reader = P.Reader(rep_r)
        self.poller = select.poll()
        self.poller.register(rep_r, select.POLLIN | select.POLLHUP | select.POLLERR)
        _live.add(self)
        self._reader = threading.Thread(target=self._drain_stderr, name=f"bitnet-worker-{self.pid}-stderr", daemon=True)
        self._reader.start()
        try:
            hello = self.request(None, None, STARTUP_TIMEOUT, expect=P.HELLO)
        except WorkerDied as exc:
            sig, name, code, words = describe_death(exc.returncode)
            raise errors.BackendCrashed(
                f"isolated worker (pid {self.pid}) {words} while starting, before serving anything; "
                f"stderr: {exc.stderr_tail or '(nothing)'}; check that {sys.executable} can import pytest_bitnet",
                errors.ErrorContext(operation="start"), signal=sig, signal_name=name, exit_code=code,
                stderr_tail=exc.stderr_tail,
            ) from None
        except WorkerStopped as exc:
            raise errors.OperationTimeout(
                f"isolated worker (pid {self.pid}) did not start within {STARTUP_TIMEOUT:g} s and was stopped; "
                f"stderr: {exc.stderr_tail or '(nothing)'}; the machine may be overloaded: retry, or use "
                "isolation='none'",
                errors.ErrorContext(operation="start", parameters={"startup_timeout": STARTUP_TIMEOUT}),
                duration=STARTUP_TIMEOUT,
            ) from None
        # The worker's hello carries the P.VERSION its every header carries, and
        # P.Reader.read refuses a header of another version before this is read.
        if hello.get("version") != P.VERSION:  # pragma: no cover -- the header check refuses first
            self.kill()
            raise errors.InternalError(f"isolated worker speaks protocol {hello.get('version')}, expected {P.VERSION}")  # NEVER: the hello's version is the header's, which Reader.read has already checked

    # -- stderr ---------------------------------------------------------------

    def _drain_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self._tail_lock:
                self.tail.append(line.rstrip("\n"))
            try:  # where the library's words went in process
                sys.stderr.write(line)
            except Exception:
                pass
        stream.close()

    def stderr_tail(self) -> str:
        # The worker is dead when this is asked: its stderr reaches EOF
        # once every line is read (bounded: a grandchild could hold it).
        self._reader.join(1.0)
        with self._tail_lock:
            return "\n".join(self.tail)

    # -- calls ----------------------------------------------------------------

    def phase(self) -> str | None:
        try:
            i = self.page[0]
        except ValueError:  # closed
            return None
        return P.PHASES[i] if 0 <= i < len(P.PHASES) else None

    def mapped(self, size: int) -> mmap.mmap:
        """The shared page at least `size` bytes long (the worker grows the file)."""
        if len(self.page) < size:
            self.page = mmap.mmap(self.page_fd, size)
        return self.page

    def request(self, kind: str | None, body: Any, timeout: float, expect: str = P.REPLY,
                on_message: Callable[[str, Any], None] | None = None) -> Any:
        """Sends a request (None: none, wait for the hello) and waits for its reply.

        Returns the REPLY body; a FAILED body is returned too, as
        ``(P.FAILED, body)``.  Raises WorkerDied / WorkerStopped.  Any
        other exception while waiting (KeyboardInterrupt) kills the worker
        first, then propagates.
        """
        waited_from = time.monotonic()
        limit = math.inf if math.isinf(timeout) else waited_from + timeout + (GRACE if kind is not None else 0.0)
        try:
            if kind is not None:
                try:
                    P.send(self.req, kind, body)
                except BrokenPipeError:
                    raise self._died() from None
            while True:
                if not self.reader.buffered():
                    left = limit - time.monotonic()
                    if left <= 0:
                        phase = self.phase()
                        self.kill()
                        raise WorkerStopped(time.monotonic() - waited_from, phase, self.stderr_tail())
                    if not self.poller.poll(None if math.isinf(left) else max(1, math.ceil(left * 1000))):
                        continue
                msg = self.reader.read()
                if msg is None:
                    raise self._died()
                got, payload = msg
                if got == expect:
                    return payload
                if got == P.FAILED:
                    return (P.FAILED, payload)
                if got == P.FAULT_HIT and self.on_fault is not None:
                    decision = self.on_fault(payload)
                    try:
                        P.send(self.req, P.FAULT_DECISION, decision)
                    except BrokenPipeError:  # it died asking: the next read sees the EOF
                        pass
                elif on_message is not None:
                    on_message(got, payload)
        except (WorkerDied, WorkerStopped):
            raise
        except BaseException:
            self.kill()
            raise

    def _died(self) -> WorkerDied:
        phase = self.phase()
        rc = self.reap(EXIT_TIMEOUT)
        return WorkerDied(rc, phase, self.stderr_tail())

    def cancel(self) -> None:
        """Asks the worker to cancel its running call (any thread; never blocks)."""
        try:
            os.write(self.ctl, P.CANCEL)
        except OSError:  # gone, or the pipe is full of cancels already
            pass

    # -- the end --------------------------------------------------------------

    def reap(self, timeout: float) -> int:
        """Waits for the worker to exit (killing it after timeout); its return code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._closed(rc)
        return rc

    def kill(self) -> int:
        """SIGKILL and reap (idempotent)."""
        if self.returncode is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            return self.reap(EXIT_TIMEOUT)
        return self.returncode

    def stop(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Asks the worker to exit, waits for it (killing it after timeout)."""
        if self.returncode is None:
            try:
                P.send(self.req, P.BYE)
            except OSError:
                pass
            return self.reap(timeout)
        return self.returncode

    def _closed(self, rc: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = rc
        for fd in (self.req, self.rep, self.ctl, self.page_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        _live.discard(self)
        # the page stays mapped until this object goes: a reader of the
        # phase must not touch a closed mapping (phase() checks anyway)


_spawner_pool: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_pid = 0  # the process that made the pool (a fork has no threads: it makes its own)
_spawner_lock = threading.Lock()


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that starts every worker (Worker.__init__ says why); it
    lives as long as the process."""
    global _spawner_pool, _spawner_pid
    with _spawner_lock:
        if _spawner_pool is None or _spawner_pid != os.getpid():
            _spawner_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitnet-isolation-spawner")
            _spawner_pid = os.getpid()
        return _spawner_pool


def _tmpfile_fd() -> int:  # pragma: no cover -- Linux has memfd_create
    import tempfile

    fd, name = tempfile.mkstemp(prefix="bitnet-isolation-")
    os.unlink(name)
    return fd


def _reap_all_at_exit() -> None:
    for w in live_workers():
        w.kill()


import atexit  # noqa: E402

atexit.register(_reap_all_at_exit)
