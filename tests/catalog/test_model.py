"""E09-E13: loading a model file."""

from __future__ import annotations

from pathlib import Path

import pytest

import pytest_bitnet as bn
from fault_inject.catalog import CATALOG
from pytest_bitnet.plugin.fixtures import Counters


def test_e09_missing_model_file(tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E09"]
    missing = tmp_path / "absent.gguf"
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(missing)
    entry.check(exc.value, values={"missing": missing})
    with pytest.raises(entry.error_class) as exc:
        bn.tokenize(missing, "hello")
    entry.check(exc.value, values={"missing": missing})
    assert bitnet_counters.delta() == {}


def test_e10_not_a_gguf_file(tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E10"]
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am a text file\n")
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(path)
    entry.check(exc.value, values={"path": path})
    assert bitnet_counters.delta() == {}


def test_e11_truncated_tensor_data(bitnet_model: Path, tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E11"]
    truncated, _ = bn.models.broken_variants(bitnet_model, tmp_path)["truncated_data"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(truncated)
    entry.check(exc.value)
    assert bitnet_counters.delta() == {}


def test_e12_unsupported_tensor_type_and_architecture(bitnet_model: Path, tmp_path: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E12"]
    unknown_type, _ = bn.models.broken_variants(bitnet_model, tmp_path)["unsupported_type"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(unknown_type)
    entry.check(exc.value)  # names the tensor and lists the known types
    gpt2 = bn.models.cached_tiny_model(tmp_path, arch="gpt2", seed=0)
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(gpt2)
    entry.check(exc.value, fragments=("unsupported architecture 'gpt2'", "supported: "))
    assert bitnet_counters.delta() == {}


@pytest.mark.bitnet_inject("load.step=hang")
def test_e13_slow_load_past_the_timeout(bitnet_model: Path, bitnet_counters: Counters) -> None:
    entry = CATALOG["E13"]
    with pytest.raises(entry.error_class) as exc:
        bn.BitnetSession.create(bitnet_model, timeout=0.2)
    entry.check(exc.value)
    assert exc.value.duration == 0.2
    assert bitnet_counters.delta() == {}  # the half-loaded model was freed
