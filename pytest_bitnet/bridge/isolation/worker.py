"""The worker of an isolated session: ``python -m pytest_bitnet.bridge.isolation.worker``.

Started by client.py only, with private pipes (protocol.py says which).  It
serves one session (or one per-call function) with the ordinary in-process
API, so every result, error, log line and warning is the one the library
gives in process; what it adds is the forwarding of those to its caller.

It never outlives its caller: PR_SET_PDEATHSIG asks the kernel for a
SIGKILL when the parent dies, and the parent's pid is checked after asking
(a parent that died before the prctl would never send it: the classic
race).  SIGINT is ignored: a Ctrl-C reaches the caller, which stops the
worker itself (client.py).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import inspect
import logging
import mmap
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

from . import protocol as P

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the caller's atexit and finalizers still reap
        pass
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(0)


class _Forward(logging.Handler):
    """Every record of the package's loggers, sent to the caller as it is made."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(logging.NOTSET)
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.worker.send(P.LOG, (record.name, record.levelno, record.getMessage(),
                                     getattr(record, "bitnet_component", None)))
        except Exception:  # a caller gone mid-log: the next request read ends the worker
            pass


def error_fields(exc: BaseException) -> dict[str, Any]:
    """What the caller needs to raise the same error: class, message, context (not the object)."""
    from .. import errors

    if not isinstance(exc, errors.BitnetError):  # a bug of ours in the worker: say where
        return {"class": "InternalError", "message": f"the isolated worker failed: {exc!r}; this is a bug in "
                f"pytest_bitnet, please report it:\n{traceback.format_exc()}", "context": None, "duration": None}
    ctx = exc.context
    return {
        "class": type(exc).__name__, "message": str(exc),
        "context": {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)},
        "duration": getattr(exc, "duration", None),
        # the native text as this process's hints worded it: the caller
        # words it with its own (errors.add_hint is per process: fault_inject's
        # and other layers' hints are registered there, not here)
        "hinted": errors.apply_hints(ctx.native_message) if ctx.native_message else None,
    }


class Worker:
    __slots__ = ("req", "rep", "ctl", "page", "page_fd", "send_lock", "session", "baseline", "sent_info", "log_handler",
                 "remote", "fault_lock", "reader", "levels_now", "caught")

    def __init__(self, req: int, rep: int, ctl: int, page_fd: int) -> None:
        self.req, self.rep, self.ctl, self.page_fd = req, rep, ctl, page_fd
        self.page = mmap.mmap(page_fd, os.fstat(page_fd).st_size)
        self.send_lock = threading.Lock()  # log lines come from any thread (the native sink)
        self.session: Any = None
        self.baseline: dict[str, int] | None = None
        self.sent_info: dict[str, str] | None = None
        self.log_handler = _Forward(self)
        self.remote: tuple[int, ...] = ()  # the caller's armed points, as last told
        self.fault_lock = threading.Lock()  # one question to the caller at a time
        self.reader = P.Reader(req)
        self.levels_now: Any = None  # the caller's log levels, as last applied
        self.caught: list[tuple[str, str]] = []  # warnings of the running request, for the caller

    def send(self, kind: str, body: Any = None) -> None:
        with self.send_lock:
            P.send(self.rep, kind, body)

    # -- the status page ------------------------------------------------------

    def phase(self, phase: str | None) -> None:
        self.page[0] = P.PHASES.index(phase)

    def logits_buffer(self, shape: tuple[int, int]) -> Any:
        import numpy as np

        need = P.STATUS_SIZE + shape[0] * shape[1] * 4
        if need > len(self.page):
            # grow the shared file for both sides: the caller maps it again
            # when the reply names a size beyond its mapping
            os.ftruncate(self.page_fd, need)
            self.page = mmap.mmap(self.page_fd, need)
        return np.ndarray(shape, dtype=np.float32, buffer=self.page, offset=P.STATUS_SIZE)

    # -- control --------------------------------------------------------------

    def control(self) -> None:
        # A cancel must reach a worker whose main thread is inside a native
        # call: this thread reads the control pipe and cancels natively.
        while True:
            try:
                data = os.read(self.ctl, 64)
            except OSError:
                return
            if not data:
                return
            s = self.session
            if s is not None and P.CANCEL in data:
                s.cancel()

    # -- requests -------------------------------------------------------------

    # -- fault points armed in the caller ---------------------------------------

    def armed(self, body: dict[str, Any]) -> None:
        """Marks the points the caller has armed now as decided by the caller."""
        told = body.get("armed", ())
        if not told and not self.remote:
            return  # the common case, every call: nothing armed, nothing was
        from .. import faults

        # Points registered at run time in the caller only (an interposing
        # libllama's) are past this registry's end: nothing here can hit
        # them, so they are left out rather than refused.
        n = len(faults.points())
        armed = tuple(i for i in told if i < n)
        if armed != self.remote:
            faults.set_remote(armed, self.decide if armed else None)
            self.remote = armed

    def decide(self, point: int, locked: bool) -> Any:
        # A hit of a point the caller armed: its engine decides (counts,
        # draws, reports the firing); this process performs the decision.
        # The caller is waiting for this request's reply, so it answers.
        with self.fault_lock:
            self.send(P.FAULT_HIT, (point, locked))
            msg = self.reader.read()
        if msg is None or msg[0] != P.FAULT_DECISION:
            return (0, None)  # the caller is gone: nothing fires, the next read ends the worker
        return msg[1]

    def levels(self, body: dict[str, Any]) -> None:
        levels = body.get("levels")
        if levels and levels != self.levels_now:  # setLevel clears every logger's cache: only on a change
            package, native, threshold = levels
            logging.getLogger("pytest_bitnet").setLevel(package)
            logging.getLogger("pytest_bitnet.native").setLevel(native)
            from .._native import lib

            if lib.bitnet_bridge_get_log_level() != threshold:
                lib.bitnet_bridge_set_log_level(threshold)
            self.levels_now = levels

    def showwarning(self, message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        # Every warning of the worker is the caller's to filter and show:
        # kept here, sent before the request's reply, re-issued there.
        self.caught.append((type(message).__name__ if isinstance(message, Warning) else category.__name__, str(message)))

    def serve(self) -> None:
        root = logging.getLogger("pytest_bitnet")
        root.addHandler(self.log_handler)
        root.propagate = False  # the caller's logging decides what is shown
        threading.Thread(target=self.control, name="bitnet-isolation-control", daemon=True).start()
        # the caller's filters decide: here every warning is caught (showwarning)
        warnings.simplefilter("always")
        warnings.showwarning = self.showwarning
        self.send(P.HELLO, {"version": P.VERSION, "pid": os.getpid()})
        handlers = self.handlers()
        while True:
            msg = self.reader.read()
            if msg is None or msg[0] == P.BYE:
                self.armed({})  # no caller to ask any more
                return
            kind, body = msg
            try:  # a failure of ours is this request's error, never the worker's end
                self.levels(body)
                self.armed(body)
                handler = handlers.get(kind)
                if handler is None:
                    raise ValueError(f"unknown request {kind!r}")
                value = handler(body)
                reply: tuple[str, Any] = (P.REPLY, {"value": value, "backend_info": self.info_changed()})
            except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the caller
                reply = (P.FAILED, {**error_fields(exc), "backend_info": self.info_changed()})
            finally:
                if self.page[0]:
                    self.phase(None)
            if self.caught:
                for w in self.caught:
                    self.send(P.WARNING, w)
                self.caught.clear()
            self.send(*reply)

    def info_changed(self) -> dict[str, str] | None:
        s = self.session
        if s is None or s.backend_info == self.sent_info:
            return None
        self.sent_info = dict(s.backend_info)
        return self.sent_info

    def handlers(self) -> dict[str, Any]:
        """Request kind -> what serves it (looked up once: a request costs one dict lookup)."""
        import numpy as np

        from .. import counters, percall
        from ..session import BitnetSession

        def tokens(raw: bytes) -> Any:
            return np.frombuffer(raw, dtype=np.int32)

        def create(b: dict[str, Any]) -> Any:
            self.baseline = counters.live_counters()
            s = self.session = BitnetSession.create(
                b["model_path"], n_ctx=b["n_ctx"], n_gpu_layers=b["n_gpu_layers"], timeout=b["timeout"],
                backend=b["backend"], library_path=b["library_path"], isolation="none",
            )
            return {"n_ctx": s.n_ctx, "n_vocab": s.n_vocab}

        # the session's close takes a deadline where the library can honour one (issue 15)
        close_takes_timeout = "timeout" in inspect.signature(BitnetSession.close).parameters

        def close(b: dict[str, Any]) -> Any:
            if close_takes_timeout:
                self.session.close(timeout=b["timeout"])
            else:
                self.session.close()
            self.session = None
            return self.leftover()

        def per_call(b: dict[str, Any]) -> Any:
            self.baseline = counters.live_counters()
            fn, kw = b["fn"], dict(b["kwargs"], isolation="none")
            if fn == "tokenize":
                result: Any = percall.tokenize(*b["args"], **kw).tobytes()
            elif fn == "evaluate":
                result = self.logits_reply(percall.evaluate(b["args"][0], tokens(b["args"][1]), **kw))
            else:
                raise ValueError(f"unknown per-call function {fn!r}")
            return {"result": result, "leftover": self.leftover()}

        return {
            P.CREATE: create,
            P.TOKENIZE: lambda b: self.session.tokenize(b["prompt"], b["add_bos"], b["parse_special"], b["timeout"]).tobytes(),
            P.DETOKENIZE: lambda b: self.session.detokenize_bytes(tokens(b["tokens"]), b["remove_special"],
                                                                  b["unparse_special"], b["timeout"]),
            P.EVALUATE: lambda b: self.logits_reply(self.session.evaluate(tokens(b["tokens"]), b["seq_id"], b["timeout"],
                                                                          b["gpu"])),
            P.N_PAST: lambda b: self.session.n_past(b["seq_id"]),
            P.RESET: lambda b: self.session.reset(b["seq_id"]),
            P.CAPABILITIES: lambda b: dataclasses.asdict(self.session.capabilities),
            P.CLOSE: close,
            P.STATS: lambda b: counters.live_counters(),
            P.PERCALL: per_call,
        }

    def logits_reply(self, out: Any) -> Any:
        # Written by the fill pass straight into the shared page
        # (_calls.logits_buffer): the reply carries only where and what shape.
        if _views_page(out, self.page):
            return ("shared", out.shape, len(self.page))
        return ("inline", out.shape, out.tobytes())

    def leftover(self) -> dict[str, int]:
        """What the worker's live counters are above their value before the
        session (or per-call function) began: a leak of the library's, which
        the caller counts as its own (client.py says why)."""
        from .. import counters

        now = counters.live_counters()
        base = self.baseline or {}
        return {k: now[k] - base.get(k, 0) for k in counters.LEAK_COUNTERS if now.get(k, 0) != base.get(k, 0)}


def _views_page(arr: Any, page: mmap.mmap) -> bool:
    base = arr
    while getattr(base, "base", None) is not None:
        base = base.base
    return base is page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pytest_bitnet.bridge.isolation.worker",
                                 description="an isolated session's worker (started by pytest_bitnet only)")
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--fds", required=True, help="request,reply,control,page file descriptors")
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    req, rep, ctl, page = (int(x) for x in args.fds.split(","))
    w = Worker(req, rep, ctl, page)
    from .. import _calls

    _calls.phase_observer = w.phase
    _calls.logits_buffer = w.logits_buffer
    w.serve()
    s = w.session
    if s is not None:  # the caller said bye (or went away) with the session open: free it
        try:
            s.close()
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
