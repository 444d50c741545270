"""Malformed model files: a precise ModelLoadError every time, nothing leaked."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors


@pytest.fixture(scope="module")
def variants(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return bn.models.broken_variants(tiny_model, tmp_path_factory.mktemp("broken"))


def test_required_variants_exist(variants: dict[str, tuple[Path, str]]) -> None:
    assert {"bad_magic", "bad_version", "truncated_data", "unsupported_type"} <= set(variants)


@pytest.mark.parametrize(
    "name",
    ["bad_magic", "bad_version", "truncated_data", "unsupported_type", "duplicate_key", "nested_array",
     "misaligned_offset", "huge_tensor_count", "huge_string_length", "data_beyond_eof", "name_too_long", "bad_alignment",
     "small_alignment"],
)
def test_variant_gives_precise_error(variants: dict[str, tuple[Path, str]], name: str) -> None:
    path, fragment = variants[name]
    for load in (lambda: bn.BitnetSession.create(path), lambda: bn.tokenize(path, "x")):
        with pytest.raises(errors.ModelLoadError) as exc:
            load()
        message = str(exc.value)
        assert fragment in message
        assert str(path) in message  # which file
        assert exc.value.context.native_code == -3


@pytest.mark.parametrize("alignment", [1, 2, 4])
def test_alignment_below_a_multiple_of_8_is_refused(make_model: Callable[..., Path], alignment: int) -> None:
    # GGUF asks a multiple of 8; a smaller power of two let F32 data sit at
    # addresses it cannot be loaded from (UBSan: misaligned load in rmsnorm)
    path = make_model(alignment=alignment)
    pattern = rf"key 'general\.alignment' at offset \d+ has value {alignment}, which is not a multiple of 8"
    for load in (lambda: bn.BitnetSession.create(path), lambda: bn.tokenize(path, "x")):
        with pytest.raises(errors.ModelLoadError, match=pattern) as exc:
            load()
        assert exc.value.context.native_code == -3


@pytest.mark.parametrize("alignment", [8, 16, 64])
def test_alignments_gguf_allows_load(make_model: Callable[..., Path], tiny_model: Path, alignment: int) -> None:
    with bn.BitnetSession.create(tiny_model, n_ctx=64) as s:
        expected = s.evaluate([1, 17, 300, 45])
    with bn.BitnetSession.create(make_model(alignment=alignment), n_ctx=64) as s:
        np.testing.assert_array_equal(s.evaluate([1, 17, 300, 45]), expected)


def test_messages_name_field_and_offset(variants: dict[str, tuple[Path, str]]) -> None:
    path, _ = variants["bad_magic"]
    with pytest.raises(errors.ModelLoadError, match=r"not a GGUF file: bad magic .* at offset 0 \(expected 'GGUF'\)"):
        bn.BitnetSession.create(path)
    path, _ = variants["truncated_data"]
    with pytest.raises(errors.ModelLoadError, match=r"truncated tensor data: tensor '[^']+' needs bytes \[\d+, \d+\) but the file ends at \d+"):
        bn.BitnetSession.create(path)


def test_every_truncation_is_a_clean_error(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    header_end = 64 * 1024  # metadata region: every prefix; beyond it, a sample
    cuts = list(range(0, min(len(data), header_end), 7)) + list(range(header_end, len(data), len(data) // 97))
    target = tmp_path / "cut.gguf"
    before = bn.live_counters()["bytes"]  # a session of an earlier module's fixture may be alive
    for n in cuts:
        target.write_bytes(data[:n])
        with pytest.raises(errors.ModelLoadError) as exc:
            bn.BitnetSession.create(target)
        assert ("not a GGUF file" in str(exc.value)) if n < 4 else ("truncated" in str(exc.value)), (n, str(exc.value))
    assert bn.live_counters()["bytes"] == before


def test_unsupported_architecture_lists_supported(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    patched = data.replace(b"bitnet", b"gpt2xx", 1)  # general.architecture's value, same length
    path = tmp_path / "arch.gguf"
    path.write_bytes(patched)
    with pytest.raises(errors.ModelLoadError, match=r"unsupported architecture 'gpt2xx' \(supported: bitnet, llama\)"):
        bn.BitnetSession.create(path)


def test_unsupported_weight_type_lists_supported(make_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import gguf
    import numpy as np

    path = tmp_path / "q8.gguf"
    src = make_model(arch="bitnet", seed=0, weight_type="f32")
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(path), "bitnet")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        value = f.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(f.name, value)
        else:
            w.add_key_value(f.name, value, vtype)
    for t in r.tensors:
        arr = np.asarray(t.data).reshape([int(x) for x in reversed(t.shape.tolist())])
        if t.name == "blk.0.attn_q.weight":
            w.add_tensor(t.name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(t.name, arr)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(errors.ModelLoadError, match=r"unsupported tensor type Q8_0 for 'blk.0.attn_q.weight' \(supported: F32, F16, TQ2_0, I2_S\)"):
        bn.BitnetSession.create(path)
