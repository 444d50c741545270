"""Points registered at run time, seen from Python: registered through the C
ABI after fault_inject was imported, they are listed, armed by name and by
pattern, fire, count and are reported as points.def's are.

Registration is for the life of the process (the native registry only
grows), so each test registers in a child process of its own: the points of
this process stay those every other test expects.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SETUP = """
import warnings
import fault_inject as fi
from fault_inject import registry
from pytest_bitnet.bridge import faults
from pytest_bitnet.bridge.abi import lib

before = len(fi.points())  # read before registering: nothing may stay cached
first = faults.register_points([
    ("llama_decode", "llama_decode returns a failure status", lib.BITNET_E_INFERENCE, {"fail", "delay", "hang"}),
    ("llama_tokenize", "llama_tokenize reports a short buffer", lib.BITNET_E_INFERENCE, {"fail", "grow"}),
    ("llama_free", "llama_free (counted)", lib.BITNET_E_INTERNAL, set()),
])
"""


def run(body: str) -> str:
    code = textwrap.dedent(SETUP) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_points_registered_after_import_are_listed() -> None:
    out = run("""
        names = [p.name for p in fi.points()]
        print(len(names) - before, names[-3:], first == before)
        p = registry.lookup("llama_tokenize")
        print(p.index - first, sorted(p.actions), p.default_error, p.description)
        try:
            registry.lookup("llama_decod")
        except registry.UnknownPoint as e:
            print(e)
    """).splitlines()
    assert out[0] == "3 ['llama_decode', 'llama_tokenize', 'llama_free'] True"
    assert out[1] == "1 ['fail', 'grow', 'off'] BITNET_E_INFERENCE llama_tokenize reports a short buffer"
    assert "unknown fault point 'llama_decod'; closest: 'llama_decode'" in out[2]


def test_registered_points_are_armed_by_pattern_and_reported_never_hit() -> None:
    out = run("""
        with fi.inject("llama_*=fail") as armed:  # a pattern skips the points that cannot fail
            print("pattern", sorted(armed.points))
        try:
            fi.arm("llama_free=fail")
        except ValueError as e:
            print("refused:", " ".join(str(e).split()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fi.inject("llama_d*=fail;llama_tokenize=grow(8)", seed=3) as armed:
                print("armed", sorted(armed.points), faults.stats(first).armed)
        print("after", faults.stats(first).armed)
        print("never", [str(w.message) for w in caught])
        print("again", faults.register_points([("llama_decode", "", -4, {"fail"}), ("llama_tokenize", "", -4, set()),
                                               ("llama_free", "", -10, set())]) == first)
        try:
            faults.register_points([("alloc", "", -5, {"fail"})])
        except ValueError as e:
            print("clash:", e)
    """).splitlines()
    assert out.pop(0) == "pattern ['llama_decode', 'llama_tokenize']"
    assert out[0].startswith("refused:") and "point 'llama_free' does not support 'fail'" in out[0], out[0]
    assert out[1] == "armed ['llama_decode', 'llama_tokenize'] True"
    assert out[2] == "after False"
    assert "armed but never hit: 'llama_d*', 'llama_tokenize'" in out[3], out[3]
    assert out[4] == "again True"
    assert "'alloc': the bridge's own point (points.def) has that name" in out[5], out[5]


def test_a_point_registered_after_a_spec_was_resolved_is_not_armed_by_its_pattern() -> None:
    out = run("""
        resolved = fi.validate("llama_*=off")  # llama_decode, llama_tokenize, llama_free
        late = faults.register_points([("llama_late", "registered after the spec was resolved", -4, {"fail"})])
        with fi.inject(resolved) as armed:
            print(sorted(armed.points), faults.stats(late).armed)
        print(faults.stats(late).armed, faults.stats(first).armed)
    """).splitlines()
    assert out[0] == "['llama_decode', 'llama_free', 'llama_tokenize'] False"
    assert out[1] == "False False"  # nothing stays armed that no handle owns
