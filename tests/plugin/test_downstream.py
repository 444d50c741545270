"""The downstream example (tests/downstream_example): the plugin catches its real leak."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "downstream_example"


def test_plugin_catches_the_downstream_leak_and_names_where_it_was_created(pytester: pytest.Pytester) -> None:
    shutil.copy(EXAMPLE / "scorer.py", pytester.path / "scorer.py")
    shutil.copy(EXAMPLE / "suite" / "test_scorer.py", pytester.path / "test_scorer.py")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_eval_failure*",
            "bitnet: native objects leaked by test_scorer.py::test_eval_failure: contexts +1*",
            "*<BitnetSession * created at (most recent call last):",
            '  File "*test_scorer.py", line *, in test_eval_failure',
            '  File "*scorer.py", line *, in score',
            "    session = open_session(model_path)",
            '  File "*scorer.py", line *, in open_session',
            "    return bn.BitnetSession.create(model_path, n_ctx=128)",
        ]
    )
    # the clean error path (tokenize) is not reported
    assert "leaked by test_scorer.py::test_tokenize_failure_is_clean" not in result.stdout.str()
