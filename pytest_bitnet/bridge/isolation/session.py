"""An isolated session: a BitnetSession whose library runs in a worker process.

``BitnetSession.create(..., isolation="process")`` returns one.  Arguments
are validated here exactly as in process (the same InvalidArgument before
anything starts); the worker serves the call with the in-process API, and
its result, error (class, message, phase, ErrorContext), warnings and log
lines come back unchanged.  What isolation adds:

* a hard deadline: a call whose reply has not come GRACE after its
  deadline stops the worker and raises OperationTimeout; the session is
  then closed ("its worker was stopped at the deadline");
* crash containment: a worker that dies during a call raises
  BackendCrashed; the session is closed;
* nothing left behind: the worker is reaped on close, timeout, crash and
  interrupt, and by the finalizer of a session dropped without close().

The live counters of this process count the session (a context and a
model) while it is open, and the creation registry tracks it as it tracks
an in-process session, so a leak check names it the same way.
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
import warnings
import weakref
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt

from .. import counters, errors, faults
from .._native import Options, lib
from ..capabilities import Capabilities
from ..session import BitnetSession
from ..settings import default_timeout
from ..validate import int_arg, parse_timeout, path_arg, prompt_arg, tokens_arg
from . import protocol as P
from .client import Worker, WorkerDied, WorkerStopped, describe_death

__all__ = ["IsolatedSession", "percall"]

log = logging.getLogger("pytest_bitnet")

#: What an open isolated session adds to this process's live counters.
FOOTPRINT = {"contexts": 1, "models": 1}


_PACKAGE_LOG = logging.getLogger("pytest_bitnet")
_NATIVE_LOG = logging.getLogger("pytest_bitnet.native")


def _levels() -> tuple[int, int, int]:
    # the caller's logging decides, as in process: the worker filters with
    # the caller's levels of now, so it sends only what would be shown
    # (loggers looked up once: getLogger takes logging's module lock)
    return _PACKAGE_LOG.getEffectiveLevel(), _NATIVE_LOG.getEffectiveLevel(), int(lib.bitnet_bridge_get_log_level())


def _new_worker() -> Worker:
    w = Worker()

    def decide(hit: tuple[int, bool]) -> Any:
        # A worker's hit of a point armed here: this process's engine
        # decides it on the calling thread (the one waiting for the reply)
        # as if the hit were its own: counts, draws, thread scope, firing
        # reports.  A `crash` decided here is the worker's death asked for.
        point, locked = hit
        how, d = faults.decide(point, locked)
        if d is not None and d.action == faults.ACTION_IDS["crash"]:
            w.crash_note = f"injected fault at '{faults.points()[point].name}' ({d.text.decode()}, hit {d.hit})"
        return how, d

    w.on_fault = decide
    return w


class _Forward:
    """A worker's log lines (re-logged as they come) and warnings (re-issued
    once the request is over: a warning the caller's filters turn into an
    error then raises from the call, as in process, instead of from the
    middle of the exchange)."""

    __slots__ = ("warnings",)

    def __init__(self) -> None:
        self.warnings: list[tuple[str, str]] = []

    def __call__(self, kind: str, body: Any) -> None:
        if kind == P.LOG:
            name, level, message, component = body
            extra = {"bitnet_component": component} if component is not None else None
            logging.getLogger(name).log(level, "%s", message, extra=extra)
        elif kind == P.WARNING:
            self.warnings.append(body)

    def issue(self) -> None:
        todo, self.warnings = self.warnings, []
        for category_name, message in todo:
            category = getattr(errors, category_name, None) or getattr(builtins, category_name, None)
            if not (isinstance(category, type) and issubclass(category, Warning)):
                category = UserWarning
            warnings.warn(category(message), stacklevel=4)


def _rebuilt(body: Mapping[str, Any]) -> errors.BitnetError:
    """The worker's error, as the same class with the same message and context."""
    cls = getattr(errors, body["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.BitnetError)):
        cls = errors.InternalError
    fields = body.get("context")
    # the call was this thread's: its ErrorContext says so, as in process
    ctx = errors.ErrorContext(**{**fields, "thread": threading.current_thread().name}) if fields else None
    message = body["message"]
    hinted = body.get("hinted")
    if hinted and ctx is not None and ctx.native_message:
        message = message.replace(hinted, errors.apply_hints(ctx.native_message), 1)
    if cls is errors.OperationTimeout:
        return errors.OperationTimeout(message, ctx, duration=body.get("duration"))
    return cls(message, ctx)


def _timed_out(operation: str, params: Mapping[str, Any], seconds: float, exc: WorkerStopped, pid: int,
               library: str, after: str) -> errors.OperationTimeout:
    phase = exc.phase
    where = f"{operation} ({phase})" if phase else operation
    text = (f"{where} failed: {operation} timed out: {library} did not return within {seconds:g} s, so its isolated "
            f"worker process (pid {pid}) was stopped at the deadline; {after}; raise the timeout (timeout=..., "
            "BITNET_CPP_TIMEOUT) or give the call less work")
    detail = ", ".join(f"{k}={v!r}" for k, v in params.items())
    ctx = errors.ErrorContext(operation=operation, phase=phase, parameters=dict(params), native_code=int(lib.BITNET_E_TIMEOUT),
                              native_message=f"{operation} timed out: the isolated worker was stopped at the deadline")
    return errors.OperationTimeout(f"{text} [{detail}]" if detail else text, ctx, duration=seconds)


def _crashed(operation: str, params: Mapping[str, Any], exc: WorkerDied, pid: int, library: str,
             after: str, requested: str | None = None) -> errors.BackendCrashed:
    sig, name, code, words = describe_death(exc.returncode)
    phase = exc.phase
    where = f"{operation} ({phase})" if phase else operation
    tail = exc.stderr_tail.strip()
    quoted = "\n".join(f"    {line}" for line in tail.splitlines()) if tail else "    (nothing)"
    if requested:
        advice = f"The crash was requested by a fault-injection spec ({requested}): disarm the point to stop it"
    else:
        advice = ("The library has a bug: report it to its authors with the stderr below; to debug it, run the same "
                  "call in process (isolation='none') under gdb or valgrind")
    text = (f"{where} crashed: the isolated worker process (pid {pid}) serving {library} {words} during {operation}; "
            f"{after}. {advice}. Last lines on its stderr:\n{quoted}")
    ctx = errors.ErrorContext(operation=operation, phase=phase,
                              parameters={**params, "pid": pid, **({"signal": name} if name else {"exit_code": code})})
    return errors.BackendCrashed(text, ctx, signal=sig, signal_name=name, exit_code=code, stderr_tail=exc.stderr_tail)


class IsolatedSession(BitnetSession):
    """A BitnetSession served by a worker process (see the module docstring)."""

    __slots__ = ("_worker", "_ended", "_call_lock", "_library")

    @classmethod
    def _start(
        cls, model_path: str | os.PathLike[str], n_ctx: int, n_gpu_layers: int, timeout: float | None,
        backend: str | None, library_path: str | os.PathLike[str] | None,
    ) -> IsolatedSession:
        raw_path = path_arg(model_path)
        n_ctx = int_arg("create", "n_ctx", n_ctx, minimum=0)
        n_gpu_layers = int_arg("create", "n_gpu_layers", n_gpu_layers, minimum=0)
        session_timeout = default_timeout() if timeout is None else parse_timeout(timeout)
        opts = Options(backend, library_path)  # the type checks, and the run-wide backend resolved here
        path = os.fsdecode(raw_path)
        params: dict[str, Any] = {"model_path": path, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers, "timeout": session_timeout}
        if backend is not None:
            params["backend"] = backend
        before = counters.snapshot()
        worker = _new_worker()
        library = library_label(opts.backend, opts.library_path)
        body = {"model_path": path, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers, "timeout": session_timeout,
                "backend": opts.backend, "library_path": opts.library_path, "levels": _levels(),
                "armed": faults.armed_points()}
        forward = _Forward()
        try:
            reply = worker.request(P.CREATE, body, session_timeout, on_message=forward)
        except WorkerStopped as exc:
            raise _timed_out("create", params, session_timeout, exc, worker.pid, library,
                             "nothing was created, and nothing is left behind") from None
        except WorkerDied as exc:
            raise _crashed("create", params, exc, worker.pid, library, "nothing was created",
                           worker.crash_note) from None
        if isinstance(reply, tuple) and reply[0] == P.FAILED:
            worker.stop()
            forward.issue()
            raise _rebuilt(reply[1])
        forward.issue()
        self = object.__new__(cls)
        self._worker = worker
        self._ctx = worker  # not None: open (BitnetSession.closed)
        self._ended = None
        self._call_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self.model_path = path
        self.timeout = session_timeout
        self.n_ctx, self.n_vocab = reply["value"]["n_ctx"], reply["value"]["n_vocab"]
        self.backend_info = _isolated_info(reply.get("backend_info") or {}, f"process (pid {worker.pid})")
        self._library = self.backend_info.get("create") or library
        counters.add_remote(worker, FOOTPRINT)
        self._serial = counters.reserve(before)
        self._finalizer = weakref.finalize(self, _finalize, worker, path, self._serial)
        counters.record(self, self._serial, before)
        return self

    # -- state -------------------------------------------------------------

    @property
    def isolated(self) -> bool:
        return True

    @property
    def pid(self) -> int | None:
        """The worker's process id (None once it is gone)."""
        w = self._ctx
        return w.pid if w is not None else None

    @property
    def handle(self) -> Any:
        raise errors.Unsupported(
            "handle: an isolated session's native context lives in its worker process, not in this one; "
            "create the session with isolation='none' to call the C ABI on it",
            errors.ErrorContext(operation="handle", parameters={"model_path": self.model_path}),
        )

    def __repr__(self) -> str:
        state = "closed" if self._ctx is None else f"n_ctx={self.n_ctx}, n_vocab={self.n_vocab}, pid={self._worker.pid}"
        return f"<BitnetSession {self.model_path!r} {state} isolated>"

    def _live(self, operation: str) -> Any:
        if self._ctx is None and self._ended is not None:
            raise errors.InferenceError(
                f"{operation} on a closed session: the session for {self.model_path!r} is closed because {self._ended}; "
                "create a new session with BitnetSession.create()",
                errors.ErrorContext(operation=operation, parameters={"model_path": self.model_path}),
            )
        return super()._live(operation)

    def _end(self, why: str | None) -> None:
        """The worker is gone: the session is closed (why: for later calls' message; None: by close())."""
        self._ctx = None
        self._ended = why
        self._finalizer.detach()
        before = counters.snapshot()
        counters.remove_remote(self._worker)
        counters.ended(self._serial, counters.CLOSED, before)

    # -- calls -------------------------------------------------------------

    def _call(self, operation: str, kind: str, body: dict[str, Any], seconds: float, params: Mapping[str, Any]) -> Any:
        if not self._call_lock.acquire(blocking=False):
            raise errors.ThreadSafetyError(
                f"{operation} failed: the session is in use by another thread: a context serves one call at a time; "
                "give each thread its own session, or serialize calls with a lock",
                errors.ErrorContext(operation=operation, parameters=dict(params), native_code=int(lib.BITNET_E_THREAD_SAFETY)),
            )
        try:
            worker = self._live(operation)
            body["levels"] = _levels()
            body["armed"] = faults.armed_points()
            forward = _Forward()
            try:
                reply = worker.request(kind, body, seconds, on_message=forward)
            except WorkerStopped as exc:
                self._end(f"its worker was stopped at the deadline of a {operation} ({seconds:g} s)")
                raise _timed_out(operation, params, seconds, exc, worker.pid, self._library,
                                 "the session is closed: create a new session") from None
            except WorkerDied as exc:
                words = describe_death(exc.returncode)[3]
                self._end(f"its worker {words} during a {operation}")
                raise _crashed(operation, params, exc, worker.pid, self._library,
                               "the session is closed: create a new session", worker.crash_note) from None
            except BaseException:
                # interrupted (KeyboardInterrupt): the worker was killed, nothing left
                self._end(f"a {operation} was interrupted and its worker stopped")
                raise
        finally:
            self._call_lock.release()
        forward.issue()
        if isinstance(reply, tuple) and reply[0] == P.FAILED:
            self._update_info(reply[1].get("backend_info"))
            exc = _rebuilt(reply[1])
            if isinstance(exc, errors.CleanupFailed):
                exc.session = self
            raise exc
        self._update_info(reply.get("backend_info"))
        return reply["value"]

    def _update_info(self, info: Mapping[str, str] | None) -> None:
        if info:
            self.backend_info = _isolated_info(info, self.backend_info["isolation"])

    def _logits(self, value: Any) -> npt.NDArray[np.float32]:
        how, shape = value[0], value[1]
        if how == "inline":
            return np.frombuffer(value[2], dtype=np.float32).reshape(shape).copy()
        page = self._worker.mapped(value[2])
        # one copy: the caller owns its array; the page is the next call's
        return np.ndarray(shape, dtype=np.float32, buffer=page, offset=P.STATUS_SIZE).copy()

    def tokenize(
        self, prompt: str | bytes, add_bos: bool = True, parse_special: bool = False, timeout: float | None = None
    ) -> npt.NDArray[np.int32]:
        raw = prompt_arg(prompt)
        bos, special = bool(add_bos), bool(parse_special)
        seconds = self._timeout(timeout)
        params = {"model_path": self.model_path, "prompt_bytes": len(raw), "add_bos": bos, "parse_special": special,
                  "timeout": seconds}
        value = self._call("tokenize", P.TOKENIZE, {"prompt": raw, "add_bos": bos, "parse_special": special,
                                                    "timeout": seconds}, seconds, params)
        return np.frombuffer(value, dtype=np.int32).copy()

    def detokenize_bytes(
        self, tokens: npt.ArrayLike, remove_special: bool = False, unparse_special: bool = False,
        timeout: float | None = None,
    ) -> bytes:
        toks = tokens_arg(tokens)
        drop, render = bool(remove_special), bool(unparse_special)
        seconds = self._timeout(timeout)
        params = {"model_path": self.model_path, "n_tokens": int(toks.size), "remove_special": drop,
                  "unparse_special": render, "timeout": seconds}
        return self._call("detokenize", P.DETOKENIZE, {"tokens": toks.tobytes(), "remove_special": drop,
                                                        "unparse_special": render, "timeout": seconds}, seconds, params)

    def evaluate(
        self, tokens: npt.ArrayLike, seq_id: int = 0, timeout: float | None = None, gpu: bool = False
    ) -> npt.NDArray[np.float32]:
        toks = tokens_arg(tokens)
        seq_id = int_arg("evaluate", "seq_id", seq_id, minimum=0)
        if gpu is not False and gpu is not True:
            raise errors.InvalidArgument(
                f"evaluate: gpu must be True or False, got {gpu!r}", errors.ErrorContext(operation="evaluate")
            )
        seconds = self._timeout(timeout)
        operation = "evaluate (gpu)" if gpu else "evaluate"
        params = {"model_path": self.model_path, "n_tokens": int(toks.size), "seq_id": seq_id, "timeout": seconds}
        value = self._call(operation, P.EVALUATE, {"tokens": toks.tobytes(), "seq_id": seq_id, "timeout": seconds,
                                                   "gpu": gpu}, seconds, params)
        return self._logits(value)

    @property
    def capabilities(self) -> Capabilities:
        fields = self._call("capabilities", P.CAPABILITIES, {}, self.timeout, {"model_path": self.model_path})
        return Capabilities(**fields)

    def n_past(self, seq_id: int = 0) -> int:
        seq_id = int_arg("n_past", "seq_id", seq_id, minimum=0)
        return int(self._call("n_past", P.N_PAST, {"seq_id": seq_id}, self.timeout,
                              {"model_path": self.model_path, "seq_id": seq_id}))

    def reset(self, seq_id: int | None = None) -> None:
        seq = None if seq_id is None else int_arg("reset", "seq_id", seq_id, minimum=0)
        self._call("reset", P.RESET, {"seq_id": seq}, self.timeout, {"model_path": self.model_path, "seq_id": seq})

    def cancel(self) -> None:
        """Cancels the running call (from another thread), in the worker.

        A library that honours cancellation stops at its next step point
        (OperationTimeout, the session stays usable); one that does not is
        stopped at the call's deadline like any other.
        """
        w = self._ctx
        if w is not None:
            w.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Frees the session in the worker, then ends the worker.

        Bounded by timeout (None: the session's) + GRACE: a free that does not
        return is ended with its worker (which frees everything the worker
        held) and raises OperationTimeout; a worker that dies in the free
        raises BackendCrashed.  Either way the session is closed and nothing
        is left behind.  A free that fails (CleanupFailed) leaves the session
        open for a retry, as in process.
        """
        seconds = self._timeout(timeout)
        with self._close_lock:
            if self._ctx is None:
                return
            worker = self._worker
            params = {"model_path": self.model_path, "timeout": seconds}
            with self._call_lock:  # waits for a call of another thread to end (bounded by its deadline)
                if self._ctx is None:
                    return
                forward = _Forward()
                try:
                    reply = worker.request(P.CLOSE, {"timeout": seconds, "levels": _levels(),
                                                     "armed": faults.armed_points()}, seconds,
                                           on_message=forward)
                except WorkerStopped as exc:
                    self._end("close() stopped its worker at the deadline")
                    raise _timed_out("close", params, seconds, exc, worker.pid, self._library,
                                     "stopping the worker freed everything it held: the session is closed") from None
                except WorkerDied as exc:
                    self._end("its worker died in close()")
                    raise _crashed("close", params, exc, worker.pid, self._library,
                                   "everything the worker held is gone with it: the session is closed",
                                   worker.crash_note) from None
                except BaseException:
                    self._end("close() was interrupted and its worker stopped")
                    raise
                forward.issue()
                if isinstance(reply, tuple) and reply[0] == P.FAILED:
                    exc = _rebuilt(reply[1])
                    if isinstance(exc, errors.CleanupFailed):
                        exc.session = self
                    raise exc
                leftover = reply["value"]
                worker.stop()
                self._end(None)
                if leftover:
                    _report_leftover(worker, leftover, self._library, self.model_path)


def library_label(backend: str | None, library_path: str | None) -> str:
    """How messages name the library before the worker has said which one it loaded."""
    what = f"the library of backend {backend!r}" if backend else "the default backend's library"
    return what + (f" ({library_path})" if library_path else "")


def _isolated_info(info: Mapping[str, str], isolation: str) -> dict[str, str]:
    """The worker's backend_info as this session's: its isolation, and its
    deadlines as isolation makes them -- a library that cannot honour a
    deadline in process is bounded anyway, by ending its worker."""
    out = {**info, "isolation": isolation}
    deadlines = out.get("deadlines")
    if deadlines is not None and deadlines != "honoured":
        out["deadlines"] = f"honoured by ending the worker at the deadline ({deadlines})"
    return out


def _report_leftover(worker: Worker, leftover: Mapping[str, int], library: str, what: str) -> None:
    # The worker's own counters were above their value before the session
    # when it closed: the library leaked.  The worker is gone, but in
    # process those objects would have stayed alive and counted, so this
    # process keeps counting them (a leak check fails the test that did it)
    # and says so.
    live = {k: v for k, v in leftover.items() if k in counters.COUNTERS and k not in counters.MONOTONIC_COUNTERS and v > 0}
    if live:
        counters.add_remote(("leftover", worker.pid, id(worker)), live)
        log.warning("isolated worker (pid %d) for %r still counted %s when its session closed: %s leaked them "
                    "(counted in live_counters() as they would be in process)", worker.pid, what,
                    ", ".join(f"{k}=+{v}" for k, v in live.items()), library)


def _finalize(worker: Worker, path: str, serial: int) -> None:
    # weakref.finalize callback: the session was dropped without close().
    # Killing the worker frees everything it held.  Kill first, warn after
    # (see session._free_context: a warning turned into an error raises).
    before = counters.snapshot()
    worker.kill()
    counters.remove_remote(worker)
    counters.ended(serial, counters.FINALIZED, before)
    log.warning("unclosed isolated BitnetSession for %r: its worker (pid %d) was stopped by the finalizer", path, worker.pid)
    warnings.warn(
        f"BitnetSession for {path!r} (isolated, worker pid {worker.pid}) was not closed; its worker was stopped "
        "by its finalizer (use 'with BitnetSession.create(...)' or call close())",
        ResourceWarning,
        stacklevel=2,
    )


def percall(fn: str, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any], seconds: float,
            params: Mapping[str, Any], library: str) -> Any:
    """A per-call function (tokenize / evaluate) in a worker of its own, started and ended here."""
    worker = _new_worker()
    forward = _Forward()
    try:
        try:
            reply = worker.request(P.PERCALL, {"fn": fn, "args": args, "kwargs": kwargs, "levels": _levels(),
                                               "armed": faults.armed_points()}, seconds,
                                   on_message=forward)
        except WorkerStopped as exc:
            raise _timed_out(operation, params, seconds, exc, worker.pid, library, "nothing is left behind") from None
        except WorkerDied as exc:
            raise _crashed(operation, params, exc, worker.pid, library, "nothing is left behind",
                           worker.crash_note) from None
        forward.issue()
        if isinstance(reply, tuple) and reply[0] == P.FAILED:
            raise _rebuilt(reply[1])
        value = reply["value"]
        if value["leftover"]:
            _report_leftover(worker, value["leftover"], library, str(params.get("model_path")))
        result = value["result"]
        if fn == "tokenize":
            return np.frombuffer(result, dtype=np.int32).copy()
        how, shape = result[0], result[1]
        if how == "inline":
            return np.frombuffer(result[2], dtype=np.float32).reshape(shape).copy()
        return np.ndarray(shape, dtype=np.float32, buffer=worker.mapped(result[2]), offset=P.STATUS_SIZE).copy()
    finally:
        worker.stop()

