"""Every input under tests/fuzz_regressions/ loads cleanly or is refused cleanly.

The files are inputs the GGUF fuzzer (fuzz/run.sh) found; see the README
there.  Each goes through the whole API (create, then tokenize and evaluate
when it loads), and must leave the live counters where they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.counters import LEAK_COUNTERS

INPUTS = sorted((Path(__file__).resolve().parents[1] / "fuzz_regressions").glob("*.gguf"))


def live() -> dict[str, int]:
    counters = bn.live_counters()
    return {k: counters[k] for k in LEAK_COUNTERS}


def test_there_are_inputs() -> None:
    # a glob that silently matches nothing would make the test below vacuous
    assert INPUTS


@pytest.mark.parametrize("path", INPUTS, ids=[p.name for p in INPUTS])
def test_fuzz_input_is_handled(path: Path) -> None:
    before = live()
    try:
        session = bn.BitnetSession.create(path, n_ctx=16, timeout=30)
    except errors.ModelLoadError as exc:
        # the message names the file, so a user can find what was refused
        assert str(path) in str(exc)
    else:
        with session:
            tokens = session.tokenize("hello world")
            try:
                session.evaluate(tokens[:4])
            except errors.InferenceError:
                pass  # fuzzed weights may well produce NaN: refused, fine
    assert live() == before
    # the per-call tokenize loads the vocabulary only: the reader's other path
    try:
        bn.tokenize(path, "hello")
    except errors.ModelLoadError:
        pass
    assert live() == before
