"""The downstream project's own tests, using the bitnet plugin's markers and fixtures."""

import pytest
from scorer import ScoreError, score


def test_score(bitnet_model):
    assert score(bitnet_model, "hello") > float("-inf")


@pytest.mark.bitnet_inject("tokenize.fill=fail")
def test_tokenize_failure_is_clean(bitnet_model):
    with pytest.raises(ScoreError, match="tokenize"):
        score(bitnet_model, "hello")


@pytest.mark.bitnet_inject("eval.fill=fail")
def test_eval_failure(bitnet_model):
    with pytest.raises(ScoreError, match="evaluate"):
        score(bitnet_model, "hello")
