"""The app's suite, as its authors would write it: run with ``pytest --bitnet-interpose=llama``.

Tests marked ``interposed`` arm llama.cpp's own functions (points named by
the C function, llama.h); the others also pass without the option
(``-m "not interposed"``).
"""

import pytest

import chatbot


def test_complete(bitnet_model):
    llm = chatbot.load(bitnet_model)
    try:
        assert isinstance(chatbot.complete(llm, "hello"), str)
    finally:
        llm.close()


def test_answer_frees_its_model(bitnet_model):
    assert isinstance(chatbot.answer(bitnet_model, "hello"), str)


def test_round_trip(bitnet_model):
    llm = chatbot.load(bitnet_model)
    try:
        assert chatbot.round_trip(llm, "hello world") == "hello world"
    finally:
        llm.close()


def test_cached_model(bitnet_model):
    # passes, but leaves a Llama in chatbot._CACHE: the leak check fails its teardown
    assert chatbot.count_tokens(chatbot.cached(bitnet_model), "hello") > 1


@pytest.mark.interposed
@pytest.mark.bitnet_inject("llama_decode=fail")
def test_decode_failure_is_runtime_error(bitnet_model):
    with pytest.raises(RuntimeError, match="llama_decode returned"):
        chatbot.answer(bitnet_model, "hello")


@pytest.mark.interposed
@pytest.mark.bitnet_inject("llama_init_from_model=fail")
def test_context_failure_is_value_error(bitnet_model):
    with pytest.raises(ValueError, match="Failed to create llama_context"):
        chatbot.load(bitnet_model)


@pytest.mark.interposed
def test_tokenize_retry(bitnet_model, bitnet_inject):
    llm = chatbot.load(bitnet_model)
    try:
        plain = llm.tokenize(b"hello world")
        # the first call reports a short buffer: llama-cpp-python retries with the size asked for
        bitnet_inject("llama_tokenize=1*grow(8)")
        assert llm.tokenize(b"hello world") == plain
        assert bitnet_inject.hits("llama_tokenize") == 2
    finally:
        llm.close()
