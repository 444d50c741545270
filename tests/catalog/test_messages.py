"""E32-E33: what every error says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from fault_inject.catalog.cabi import err_buffer, native_context, raise_for_code
from fault_inject.catalog.runtime import evaluating_in_another_thread
from pytest_bitnet import errors
from pytest_bitnet.bridge.abi import ffi, lib
from pytest_bitnet.plugin.fixtures import Counters, Injector


def test_e32_every_error_class_says_what_why_and_how_to_fix(
    bitnet_model: Path, tmp_path: Path, library_abi99: Path, monkeypatch: pytest.MonkeyPatch, bitnet_counters: Counters
) -> None:
    entry = CATALOG["E32"]

    def create(**kw: Any) -> Callable[[], Any]:
        return lambda: bn.BitnetSession.create(bitnet_model, **kw)

    def injected(spec: str, call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with fi.inject(spec):
                return call()
        return run

    def library_dir_empty() -> None:
        with monkeypatch.context() as m:
            m.setenv("BITNET_CPP_LIBDIR", str(tmp_path))
            bn.BitnetSession.create(bitnet_model, backend="dlopen")

    def tokenize_with_freed_handle() -> None:
        with native_context(bitnet_model) as ctx:
            pass
        n, err = ffi.new("int32_t *"), err_buffer()
        raise_for_code(lib.bitnet_cpp_tokenize_with_context(ctx, b"x", 1, 0, ffi.NULL, 0, n, err, len(err)), "tokenize", err)

    with bn.BitnetSession.create(bitnet_model) as s, bn.BitnetSession.create(bitnet_model) as closing:

        def second_thread() -> None:
            with evaluating_in_another_thread(s, [1, 2, 3]):
                s.tokenize("meanwhile")

        # (class, how-to-fix fragment, a call that really fails with that class)
        failures: list[tuple[str, str, Callable[[], Any]]] = [
            ("CppNotAvailable", "BITNET_BACKEND=reference", create(backend="stub")),
            ("LibraryNotFound", "BITNET_CPP_LIBDIR", library_dir_empty),
            ("SymbolNotFound", "rebuild", injected("dlsym.bitnet_cpp_init_context=missing;dlsym.bitnet_cpp_session_create=missing", create(backend="dlopen"))),
            ("AbiMismatch", "rebuild", create(backend="dlopen", library_path=library_abi99)),
            ("ModelLoadError", "check the path", lambda: bn.BitnetSession.create(tmp_path / "absent.gguf")),
            ("InferenceError", "ids must be in", lambda: s.evaluate([1, 10_000])),
            ("OutOfMemory", "n_ctx", injected("alloc=oom", create())),
            ("ContextOverflow", "n_ctx", lambda: s.evaluate([1] * 600)),
            ("ThreadSafetyError", "give each thread its own", second_thread),
            ("CleanupFailed", "disarm", injected("free_context=1*fail", closing.close)),
            ("OperationTimeout", "raise the timeout", injected("eval.step=hang", lambda: s.evaluate([1], timeout=0.05))),
            ("InvalidHandle", "create", tokenize_with_freed_handle),
            ("InvalidArgument", "expected 0..", create(n_ctx=-1)),
            ("Unsupported", "n_gpu_layers=0", create(n_gpu_layers=1)),
            ("InternalError", "disarm", injected("tokenize.fill=fail(internal)", lambda: s.tokenize("x"))),
        ]
        for name, fix, call in failures:
            with pytest.raises(getattr(errors, name)) as exc:
                call()
            err = exc.value
            assert type(err).__name__ == name
            entry.check(err, expect=name, fragments=(fix,))  # how to fix it
            what = err.context.operation
            assert what and what != "unknown" and what in str(err), f"{name}: the operation is not named"
            assert len(str(err)) > len(what) + 40, f"{name}: too short to say why: {err}"
    every_native_class = {cls.__name__ for cls in errors.code_classes().values()}
    assert every_native_class <= {name for name, _, _ in failures}
    assert bitnet_counters.delta() == {}


def test_e33_every_native_code_maps_to_its_class(bitnet_model: Path, bitnet_inject: Injector, bitnet_counters: Counters) -> None:
    entry = CATALOG["E33"]
    with bn.BitnetSession.create(bitnet_model) as s:
        for name, code in sorted(fi.error_codes().items(), key=lambda kv: -kv[1]):
            cls = errors.code_classes()[code]
            with bitnet_inject(f"tokenize.fill=fail({code})"):
                with pytest.raises(cls) as exc:
                    s.tokenize("codes")
            entry.check(exc.value, expect=cls.__name__, fragments=(f"fail({code})",))  # and never "code=-N"
            assert exc.value.context.native_code == code, name
    assert bitnet_counters.delta() == {}
