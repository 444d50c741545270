"""E32-E33: what every error says."""

from __future__ import annotations

from typing import Any, Callable

import pytest_bitnet as bn
from pytest_bitnet import errors

from pytest_bitnet.bridge.abi import ffi

from .. import registry
from ._core import Scenario, entry
from .cabi import tokenize_on_handle
from .library import library_with_abi
from .runtime import evaluating_in_another_thread


def _failures(s: Scenario) -> list[tuple[str, str, Callable[[], Any]]]:
    """(class, how-to-fix fragment, a call that really fails with that class)."""
    sess = s.session()
    unclosable = s.session()  # free_context fails once: the scenario's cleanup frees it
    empty = s.tmp / "empty"
    empty.mkdir()

    def with_env(fn: Callable[[], Any], **env: str) -> Callable[[], Any]:
        def call() -> Any:
            with s.env(**env):
                return fn()
        return call

    def injected(spec: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with s.inject(spec):
                return fn()
        return call

    def two_threads() -> None:
        with evaluating_in_another_thread(sess, [1, 2, 3], name=s.entry.id):
            sess.tokenize("meanwhile")

    abi_lib = str(library_with_abi(s.tmp, 999))
    return [
        ("CppNotAvailable", "BITNET_BACKEND=reference", lambda: bn.BitnetSession.create(s.model, backend="stub")),
        ("LibraryNotFound", "BITNET_CPP_LIBDIR", with_env(lambda: bn.BitnetSession.create(s.model, backend="dlopen"), BITNET_CPP_LIBDIR=str(empty))),
        ("SymbolNotFound", "rebuild", injected("dlsym.bitnet_cpp_init_context=missing;dlsym.bitnet_cpp_session_create=missing", lambda: bn.BitnetSession.create(s.model, backend="dlopen"))),
        ("AbiMismatch", "rebuild", lambda: bn.BitnetSession.create(s.model, backend="dlopen", library_path=abi_lib)),
        ("ModelLoadError", "check the path", lambda: s.session(s.tmp / "absent.gguf")),
        ("InferenceError", "ids must be in", lambda: sess.evaluate([1, 10_000])),
        ("OutOfMemory", "lower n_ctx", injected("alloc=oom", lambda: s.session())),
        ("ContextOverflow", "n_ctx", lambda: sess.evaluate([1] * 600)),
        ("ThreadSafetyError", "give each thread its own", two_threads),
        ("CleanupFailed", "disarm", injected("free_context=1*fail", unclosable.close)),
        ("OperationTimeout", "raise the timeout", injected("eval.fill=hang", lambda: sess.evaluate([1], timeout=0.05))),
        ("InvalidHandle", "create", lambda: tokenize_on_handle(ffi.NULL)),
        ("InvalidArgument", "expected 0..", lambda: s.session(n_ctx=-1)),
        ("Unsupported", "n_gpu_layers=0", lambda: s.session(n_gpu_layers=1)),
        ("InternalError", "disarm", injected("tokenize.fill=fail(internal)", lambda: sess.tokenize("x"))),
    ]


@entry("E32", "messages", "every error class, from a real failure, says what / why / how to fix",
       expect="BitnetError")
def e32(s: Scenario) -> None:
    """one real failure per class (15 classes): the message names the operation, the cause and a fix"""
    seen = set()
    for cls_name, how, call in _failures(s):
        err = s.fails(call, expect=cls_name, fragments=(how,))
        s.check(type(err).__name__ == cls_name, f"{cls_name}: got {type(err).__name__}")
        text = str(err)
        what = err.context.operation
        s.check(what and what != "unknown" and what in text, f"{cls_name}: the message does not name the operation: {text[:200]}")
        s.check(len(text) > len(what) + 40, f"{cls_name}: the message is too short to say why: {text!r}")
        seen.add(cls_name)
    native_classes = {c.__name__ for c in errors.code_classes().values()}
    s.check(native_classes <= seen, f"classes without a real failure here: {sorted(native_classes - seen)}")


@entry("E33", "messages", "every native code maps to its class; no raw \"code=-N\" in messages",
       expect="BitnetError")
def e33(s: Scenario) -> None:
    """for each BITNET_E_* code: session.tokenize with tokenize.fill=fail(code)"""
    sess = s.session()
    for name, code in sorted(registry.error_codes().items(), key=lambda kv: -kv[1]):
        want = errors.code_classes()[code].__name__
        with s.inject(f"tokenize.fill=fail({code})"):
            err = s.fails(sess.tokenize, "codes", expect=want, fragments=(f"fail({code})",))
        s.check(err.context.native_code == code, f"{name}: native_code {err.context.native_code}")
