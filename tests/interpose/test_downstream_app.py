"""The example app (tests/downstream_llama_app) under ``pytest --bitnet-interpose=llama``.

The app uses only llama_cpp; its suite arms llama.cpp's own functions by
their C names.  Without the option the same suite gets nothing (its leak
passes, llama_* points are unknown names): that is issue 14's starting point.
"""

from __future__ import annotations

import pytest

# The outcome of the app's suite when interposed: every test passes, and the
# teardown of test_cached_model fails the leak check (the Llama parked in
# chatbot._CACHE).
INTERPOSED_OUTCOMES = {"passed": 7, "errors": 1}

LEAK_LINES = [
    "*ERROR at teardown of test_cached_model*",
    "*leaked by test_chatbot.py::test_cached_model*",
    '  File "*chatbot.py", line *, in cached',
    "    _CACHE[key] = load(model_path)",
    '  File "*chatbot.py", line *, in load',
    "    return Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=1, verbose=False)",
]


def test_without_interposition_the_suite_sees_nothing(llama_app: pytest.Pytester) -> None:
    result = llama_app.runpytest_subprocess("-m", "not interposed")
    # the parked Llama is invisible to the leak check: no llama object is counted
    result.assert_outcomes(passed=4, deselected=3)
    assert "leaked by" not in result.stdout.str()


def _interposed(llama_app: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytest.importorskip("fault_inject.interpose", reason="the interposer is not built in this tree yet")
    return llama_app.runpytest_subprocess("--bitnet-interpose=llama", *args)


def test_the_suite_under_interposition(llama_app: pytest.Pytester) -> None:
    result = _interposed(llama_app, "-rA")
    result.assert_outcomes(**INTERPOSED_OUTCOMES)
    out = result.stdout.str()
    # the header says which real library is interposed
    result.stdout.fnmatch_lines(["*interpos*libllama.so*"])
    # the leak names the line of the app that made the Llama
    result.stdout.fnmatch_lines(LEAK_LINES)
    # the well-behaved tests are not blamed
    for name in ("test_complete", "test_answer_frees_its_model", "test_decode_failure_is_runtime_error",
                 "test_context_failure_is_value_error", "test_tokenize_retry"):
        assert f"leaked by test_chatbot.py::{name}" not in out, name


def test_the_suite_under_interposition_with_xdist(llama_app: pytest.Pytester) -> None:
    result = _interposed(llama_app, "-n", "2")
    result.assert_outcomes(**INTERPOSED_OUTCOMES)
    result.stdout.fnmatch_lines(["*leaked by test_chatbot.py::test_cached_model*"])


def test_a_crash_in_an_interposed_call_on_a_worker_is_named(llama_app: pytest.Pytester) -> None:
    llama_app.makepyfile(
        test_crash="""
        import pytest
        import chatbot

        @pytest.mark.bitnet_inject("llama_decode=crash", seed=7)
        def test_crashes(bitnet_model):
            chatbot.answer(bitnet_model, "boom")

        def test_after():
            pass
        """
    )
    result = _interposed(llama_app, "-n", "2", "test_crash.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*worker 'gw*' crashed while running 'test_crash.py::test_crashes'",
            "bitnet: test_crash.py::test_crashes crashed the worker with fault spec 'llama_decode=crash' (seed 7) armed",
        ]
    )
