import pytest

import binding

PARKED = []


def test_tokenize(bitnet_model):
    model = binding.Model(str(bitnet_model))
    try:
        assert model.tokenize("hello world", capacity=64)[0] == 1
    finally:
        model.close()


@pytest.mark.bitnet_inject("llama_model_load_from_file=fail")
def test_load_failure():
    with pytest.raises(RuntimeError, match="could not load"):
        binding.Model("/nonexistent.gguf")


def test_tokenize_retry(bitnet_model, bitnet_inject):
    model = binding.Model(str(bitnet_model))
    try:
        plain = model.tokenize("hello world", capacity=64)
        # fits, but the first call reports a short buffer: the binding retries with the size asked for
        bitnet_inject("llama_tokenize=1*grow(8)")
        assert model.tokenize("hello world", capacity=64) == plain
        assert bitnet_inject.hits("llama_tokenize") == 2
    finally:
        model.close()


def test_parks_a_model(bitnet_model):
    PARKED.append(binding.Model(str(bitnet_model)))  # never closed
