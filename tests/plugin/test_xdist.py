"""Under pytest-xdist: settings reach workers, data travels on reports, crashes are named."""

from __future__ import annotations

import pytest

pytest.importorskip("xdist")


def test_spec_and_seed_reach_every_worker_and_are_summarised(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os, pytest, pytest_bitnet as bn
        @pytest.mark.parametrize("i", range(6))
        def test_armed(i, bitnet_session, bitnet_inject, tmp_path_factory):
            (armed,) = bitnet_inject.armed
            out = tmp_path_factory.getbasetemp().parent / f"seen-{os.environ['PYTEST_XDIST_WORKER']}-{i}"
            out.write_text(f"{armed.spec}|{armed.seed}|{os.environ['PYTEST_CURRENT_TEST'].split(' ')[0]}")
            with pytest.raises(bn.errors.InferenceError):
                bitnet_session.tokenize("x")
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--bitnet-inject=tokenize.fill=fail")
    result.assert_outcomes(passed=6)
    header = next(line for line in result.outlines if line.startswith("bitnet: inject="))
    seed = header.split("seed=")[1].split(" ")[0]
    seen = {p.read_text() for p in pytester.path.glob("**/seen-*")}
    import fault_inject as fi

    # every worker derives each test's seed from the controller's run seed and the node id
    assert len(seen) == 6
    assert seen == {f"tokenize.fill=fail|{fi.derive_seed(int(seed), nodeid)}|{nodeid}" for nodeid in (s.split("|")[2] for s in seen)}
    assert len({s.split("|")[1] for s in seen}) == 6
    workers = {p.name.split("-")[1] for p in pytester.path.glob("**/seen-*")}
    assert len(workers) == 2
    result.stdout.fnmatch_lines([f"fault spec 'tokenize.fill=fail' (seed {seed}) armed in 6 test(s):", "  tokenize.fill: 6 hits, 6 fired"])


def test_leak_under_xdist_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest_bitnet as bn
        KEEP = []
        def test_leak(bitnet_model):
            KEEP.append(bn.BitnetSession.create(bitnet_model))
        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["native leaks in 1 test(s):", "*leaked by test_leak_under_xdist_fails_the_run.py::test_leak*", "*in test_leak"])


def test_a_dropped_session_under_xdist_is_reported_with_its_stack_in_junit(pytester: pytest.Pytester) -> None:
    # Issue 20, items 2 and 11: the per-object verdict is the worker's, and
    # travels on the teardown report to the controller's summary and XML.
    pytester.makepyfile(
        """
        import pytest_bitnet as bn
        def test_drops(bitnet_model):
            bn.BitnetSession.create(bitnet_model).tokenize("dropped")
        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--junitxml=out.xml")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["native leaks in 1 test(s):", "*leaked by *::test_drops: 1 session not closed*",
                                 "*not closed: freed by its finalizer*", "*in test_drops"])
    import xml.etree.ElementTree as ET

    (error,) = ET.parse(pytester.path / "out.xml").getroot().iter("error")
    assert "not closed: freed by its finalizer" in (error.text or "") and "in test_drops" in (error.text or "")


def test_worker_crash_names_test_and_fault_spec(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.bitnet_inject("tokenize.fill=crash", seed=42)
        def test_crashes(bitnet_session):
            bitnet_session.tokenize("boom")
        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*worker 'gw*' crashed while running 'test_worker_crash_names_test_and_fault_spec.py::test_crashes'",
            "bitnet: test_worker_crash_names_test_and_fault_spec.py::test_crashes crashed the worker with fault spec 'tokenize.fill=crash' (seed 42) armed",
            # the marker is in the file; the run seed (not the marker's) is what a rerun needs
            "bitnet: reproduce: pytest 'test_worker_crash_names_test_and_fault_spec.py::test_crashes' --bitnet-seed=*",
        ]
    )
    result.stdout.fnmatch_lines(["worker crash: *test_crashes crashed the worker with fault spec 'tokenize.fill=crash'*"])
