"""The per-call functions' two passes see one model file (native/bridge/percall.c).

A per-call function is called twice, a size query and a fill, and each call
loads the path.  A file replaced in between must make the fill refuse (it
would write another model's rows x cols into a buffer sized for the first);
a file replaced while a pass runs must make that pass refuse.  These drive
the two passes through the C ABI themselves, so the replacement lands
exactly between them; tests/bridge/test_percall.py does it through the
Python API and races a writer thread against it.  (The plugin's leak check
holds every test here to its counters' baseline.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import fault_inject as fi
import pytest_bitnet as bn
from fault_inject.events import on_fire
from pytest_bitnet.bridge import abi

ffi, lib = abi.ffi, abi.lib
TOKENS = np.array([1, 5, 7], dtype=np.int32)
CHANGED = "the model file changed between the query pass and the fill pass"


@pytest.fixture()
def files(make_model: Callable[..., Path], tmp_path: Path) -> dict[str, Path]:
    """'path' holds model 'a' (512 tokens of vocabulary); 'b' has 300."""
    a, b = make_model(n_vocab=512), make_model(n_vocab=300)
    path = tmp_path / "model.gguf"
    shutil.copyfile(a, path)
    return {"a": a, "b": b, "path": path}


def replace(path: Path, source: Path) -> None:
    """What a writer does: a complete new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


class Passes:
    """The two passes of the per-call functions, called one by one."""

    def __init__(self, path: Path) -> None:
        self.path = os.fsencode(path)
        self.opts = abi.Options("reference")
        self.err = ffi.new("char[]", abi.ERR_LEN)
        self.tokens = ffi.from_buffer("int32_t[]", TOKENS)

    def message(self) -> str:
        return str(ffi.string(self.err).decode())

    def eval_query(self) -> tuple[int, int, int]:
        rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
        rc = lib.bitnet_bridge_percall_eval(self.opts.cdata, self.path, self.tokens, TOKENS.size, 0, ffi.NULL, 0,
                                            rows, cols, self.err, len(self.err))
        return rc, rows[0], cols[0]

    def eval_fill(self, out: np.ndarray) -> tuple[int, int, int]:
        rows, cols = ffi.new("int32_t *"), ffi.new("int32_t *")
        rc = lib.bitnet_bridge_percall_eval(self.opts.cdata, self.path, self.tokens, TOKENS.size, 0,
                                            ffi.from_buffer("float[]", out), out.size, rows, cols, self.err, len(self.err))
        return rc, rows[0], cols[0]

    def tokenize(self, prompt: bytes, out: Any = None) -> tuple[int, int]:
        n = ffi.new("int32_t *")
        buf, cap = (ffi.NULL, 0) if out is None else (ffi.from_buffer("int32_t[]", out), out.size)
        rc = lib.bitnet_bridge_percall_tokenize(self.opts.cdata, self.path, prompt, 1, 0, buf, cap, n,
                                                self.err, len(self.err))
        return rc, n[0]


def test_eval_fill_refuses_a_file_replaced_after_its_query(files: dict[str, Path]) -> None:
    p = Passes(files["path"])
    rc, rows, cols = p.eval_query()
    assert (rc, rows, cols) == (0, 3, 512)
    replace(files["path"], files["b"])
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    rc, _, _ = p.eval_fill(out)
    # before the fix: rc 0, rows x cols 3 x 300 written into the 3 x 512 buffer
    assert rc == lib.BITNET_E_MODEL_LOAD, p.message()
    assert CHANGED in p.message() and "repeat both passes" in p.message()
    assert str(files["path"]) in p.message()
    assert np.isnan(out).all()  # refused before loading: nothing written
    with pytest.raises(bn.errors.ModelLoadError, match="changed between the query pass and the fill pass"):
        abi.raise_for_code(rc, "evaluate", p.err)


def test_a_new_query_measures_the_new_file(files: dict[str, Path]) -> None:
    p = Passes(files["path"])
    assert p.eval_query()[0] == 0
    replace(files["path"], files["b"])
    assert p.eval_fill(np.empty((3, 512), np.float32))[0] == lib.BITNET_E_MODEL_LOAD
    rc, rows, cols = p.eval_query()  # what the message says to do
    assert (rc, rows, cols) == (0, 3, 300)
    out = np.empty((rows, cols), np.float32)
    assert p.eval_fill(out) == (0, 3, 300)
    np.testing.assert_array_equal(out, bn.evaluate(files["b"], TOKENS))


def test_an_unchanged_file_fills_and_a_fill_without_its_query_is_not_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    p = Passes(files["path"])
    assert p.eval_query()[0] == 0
    out = np.empty((3, 512), np.float32)
    assert p.eval_fill(out) == (0, 3, 512)
    assert p.eval_fill(out) == (0, 3, 512)  # the query's record holds for every fill that follows
    np.testing.assert_array_equal(out, bn.evaluate(files["a"], TOKENS))
    # a caller that knows the size fills a path this thread never queried
    other = Passes(tmp_path / "other.gguf")
    shutil.copyfile(files["b"], tmp_path / "other.gguf")
    assert other.eval_fill(np.empty((3, 300), np.float32)) == (0, 3, 300)


def test_tokenize_fill_refuses_a_file_replaced_after_its_query(files: dict[str, Path]) -> None:
    p = Passes(files["path"])
    rc, n = p.tokenize(b"hello world")
    assert rc == 0 and n > 0
    replace(files["path"], files["b"])
    out = np.full(n, -7, dtype=np.int32)
    rc, _ = p.tokenize(b"hello world", out)
    assert rc == lib.BITNET_E_MODEL_LOAD, p.message()
    assert CHANGED in p.message() and "of tokenize" in p.message()
    assert (out == -7).all()


def test_a_file_replaced_during_the_fill_is_refused(files: dict[str, Path]) -> None:
    # eval.step fires inside the forward pass, after the fill loaded the
    # file: the listener replaces it right there, on the calling thread.
    p = Passes(files["path"])
    assert p.eval_query()[0] == 0

    def during(event: fi.events.FireEvent) -> None:
        if event.point == "eval.step":
            replace(files["path"], files["b"])

    unsubscribe = on_fire(during)
    try:
        with fi.inject("eval.step=1*delay(0)"):
            rc, _, _ = p.eval_fill(np.empty((3, 512), np.float32))
    finally:
        unsubscribe()
    assert rc == lib.BITNET_E_MODEL_LOAD, p.message()
    assert "was replaced or modified during the fill pass of evaluate" in p.message()
    assert "must be discarded" in p.message()


def test_a_file_replaced_during_the_query_is_refused(files: dict[str, Path]) -> None:
    # load.step fires while the query reads the file's metadata.
    p = Passes(files["path"])

    def during(event: fi.events.FireEvent) -> None:
        if event.point == "load.step":
            replace(files["path"], files["b"])

    unsubscribe = on_fire(during)
    try:
        with fi.inject("load.step=1*delay(0)"):
            rc, _, _ = p.eval_query()
    finally:
        unsubscribe()
    assert rc == lib.BITNET_E_MODEL_LOAD, p.message()
    assert "during the query pass of evaluate" in p.message() and "its size may be another file's" in p.message()
    # and no record is left for a fill to trust
    replace(files["path"], files["a"])
    assert p.eval_fill(np.empty((3, 512), np.float32)) == (0, 3, 512)


def test_a_timeout_is_reported_as_one_even_when_the_file_changed(files: dict[str, Path]) -> None:
    # the deadline, not the replacement, is why the call stopped
    p = Passes(files["path"])
    assert p.eval_query()[0] == 0

    def during(event: fi.events.FireEvent) -> None:
        if event.point == "eval.step":
            replace(files["path"], files["b"])

    unsubscribe = on_fire(during)
    lib.bitnet_bridge_set_call_timeout(200_000_000)
    try:
        with fi.inject("eval.step=1*hang"):
            rc, _, _ = p.eval_fill(np.empty((3, 512), np.float32))
    finally:
        lib.bitnet_bridge_set_call_timeout(0)
        unsubscribe()
    assert rc == lib.BITNET_E_TIMEOUT, p.message()


def test_served_by_names_the_tier_of_the_last_per_call_function(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def served() -> str:
        n = lib.bitnet_bridge_percall_served_by(ffi.NULL, 0)
        buf = ffi.new("char[]", n + 1)
        assert lib.bitnet_bridge_percall_served_by(buf, n + 1) == n
        return str(ffi.string(buf).decode())

    Passes(files["path"]).eval_query()
    assert served() == "reference"
    monkeypatch.setenv("BITNET_FORCE_LLAMA_FALLBACK", "1")
    monkeypatch.setenv("BITNET_FALLBACK", "reference")
    Passes(files["path"]).tokenize(b"x")
    assert served() == "fallback:reference (BITNET_FORCE_LLAMA_FALLBACK=1)"
    stub = Passes(files["path"])
    stub.opts = abi.Options("stub")
    stub.tokenize(b"x")
    assert served() == "stub"
