"""Markers and fixtures: registration, arming, disarming whatever the outcome."""

from __future__ import annotations

import pytest


def test_markers_are_listed(pytester: pytest.Pytester) -> None:
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        ["@pytest.mark.bitnet_inject(spec, thread=False, seed=None):*", "@pytest.mark.bitnet_allow_leaks:*", "@pytest.mark.bitnet_timeout(seconds):*"]
    )


def test_markers_work_under_strict_markers_without_flags(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, pytest_bitnet as bn
        KEEP = []
        @pytest.mark.bitnet_inject("tokenize.fill=fail")
        def test_inject(bitnet_session):
            with pytest.raises(bn.errors.InferenceError, match="FILL PHASE"):
                bitnet_session.tokenize("hello")
        @pytest.mark.bitnet_allow_leaks
        def test_allowed(bitnet_model):
            KEEP.append(bn.BitnetSession.create(bitnet_model))
        @pytest.mark.bitnet_timeout(3)
        def test_timeout():
            from pytest_bitnet.bridge import settings
            assert settings.default_timeout() == 3.0  # the plugin sets defaults, not os.environ
        """
    )
    # a subprocess: the allowed leak must not outlive the inner run into this one
    pytester.runpytest_subprocess("--strict-markers").assert_outcomes(passed=3)


def test_thread_scoped_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading, pytest
        @pytest.mark.bitnet_inject("tokenize.fill=fail", thread=True)
        def test_other_thread_not_hit(bitnet_session, bitnet_inject):
            out = []
            t = threading.Thread(target=lambda: out.append(bitnet_session.tokenize("hi")))
            t.start(); t.join()
            assert len(out) == 1
            assert bitnet_inject.armed[0].thread_scoped
            assert bitnet_inject.hits("tokenize.fill") == 0
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_bad_marker_arguments_error_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.bitnet_inject("tokenize.fill=boom")
        def test_bad_spec(): pass
        @pytest.mark.bitnet_timeout("soon")
        def test_bad_timeout(): pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*invalid fault spec from marker bitnet_inject on test_bad_marker_arguments_error_the_test.py::test_bad_spec*"])
    result.stdout.fnmatch_lines(["*invalid timeout 'soon' from marker bitnet_timeout*"])


def test_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest, fault_inject as fi, pytest_bitnet as bn
        SEEN = []
        def test_model_and_session(bitnet_model, bitnet_session, bitnet_counters):
            assert bitnet_model.exists() and bitnet_model.suffix == ".gguf"
            assert not bitnet_session.closed
            assert bitnet_session.tokenize("hi").size > 0
            SEEN.append(bitnet_session)
            assert bitnet_counters.delta() == {}
            with bn.BitnetSession.create(bitnet_model) as s:
                assert bitnet_counters.delta()["contexts"] == 1
            assert bitnet_counters.current()["contexts"] == bitnet_counters.baseline["contexts"]
        def test_session_was_closed_at_teardown():
            assert SEEN[0].closed
        def test_inject_fixture_fails(bitnet_session, bitnet_inject):
            armed = bitnet_inject("eval.fill=fail")
            with pytest.raises(bn.errors.InferenceError, match="FILL PHASE"):
                bitnet_session.evaluate([1, 2])
            assert bitnet_inject.hits("eval.fill") == 1 and bitnet_inject.fired() == {"eval.fill": 1}
            assert armed.active
            assert False, "the test fails with the fault still armed"
        def test_nothing_stays_armed_after_a_failure():
            assert fi.armed() == ()
        def test_inject_fixture_as_context_manager(bitnet_session, bitnet_inject):
            with bitnet_inject("tokenize.query=fail") as armed:
                with pytest.raises(bn.errors.InferenceError, match="QUERY PHASE"):
                    bitnet_session.tokenize("x")
            assert not armed.active
            assert bitnet_session.tokenize("x").size
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=1)
