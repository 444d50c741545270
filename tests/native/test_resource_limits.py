"""Resource limits: absurd sizes are refused before anything that size is
allocated, and a real shortage (a lowered RLIMIT_AS) fails cleanly.

"Before allocation" is checked two ways: the native high-water mark
(live_counters()["peak_bytes"]) may grow by at most the tiny model's own
load, and the process's peak RSS by no more than a few MB.  Both sizes are
printed; only the gross bound is asserted (an absurd request would move
them by gigabytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
from pytest_bitnet.testing import malformed

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("reference", "dlopen")  # the stub loads nothing: no sizes to refuse

# The model: one layer, head_dim 128, one KV head -> 2 * 1 * 128 * 1 * 4 bytes
# of KV cache per position.
MODEL_PARAMS = dict(arch="bitnet", seed=0, n_vocab=300, n_embd=256, n_layer=1, n_head=2, n_head_kv=1, n_ff=256)
KV_BYTES_PER_POSITION = 2 * 1 * (256 // 2) * 1 * 4

# Bounds that a refused-before-allocation request stays far below, and an
# allocate-then-check bug (gigabytes) far above.
PEAK_SLACK = 16 * 2**20
RSS_SLACK = 64 * 2**20

UINT32, ARRAY = 4, 9


@pytest.fixture(scope="module")
def small_model(make_model: Callable[..., Path]) -> Path:
    return make_model(**MODEL_PARAMS)


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@dataclasses.dataclass
class _Growth:
    peak: int = 0
    rss: int = 0


@pytest.fixture
def growth() -> Iterator[_Growth]:
    """How much the native peak and the process's peak RSS grew in the test."""
    g = _Growth()
    peak0, rss0 = bn.live_counters()["peak_bytes"], _max_rss()
    yield g
    g.peak = bn.live_counters()["peak_bytes"] - peak0
    g.rss = _max_rss() - rss0
    print(f"peak_bytes grew {g.peak} B, peak RSS grew {g.rss} B")
    assert g.peak < PEAK_SLACK, f"native peak grew by {g.peak} bytes: something was allocated before the size check"
    assert g.rss < RSS_SLACK, f"peak RSS grew by {g.rss} bytes: something was allocated before the size check"


def _kv_message(n_ctx: int) -> re.Pattern[str]:
    need = n_ctx * KV_BYTES_PER_POSITION
    return re.compile(rf"n_ctx={n_ctx} needs {need} bytes for the KV cache.*lower n_ctx")


# ---- absurd n_ctx ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_ctx", [2**31 - 1, 2**27])  # 2 TiB; 128 GiB: both beyond any test machine
def test_absurd_n_ctx_is_refused_before_allocation(small_model: Path, backend: str, n_ctx: int, growth: _Growth) -> None:
    with pytest.raises(errors.OutOfMemory, match=_kv_message(n_ctx)):
        bn.BitnetSession.create(small_model, n_ctx=n_ctx, backend=backend)


def test_absurd_n_ctx_per_call_is_refused(small_model: Path, growth: _Growth) -> None:
    with pytest.raises(errors.OutOfMemory, match=_kv_message(2**31 - 1)):
        bn.evaluate(small_model, [1, 2, 3], n_ctx=2**31 - 1)


# ---- absurd model sizes -----------------------------------------------------------------


def _rewrite(src: Path, dst: Path, *, kv: dict[bytes, int] | None = None, last_ne: list[int] | None = None) -> Path:
    """src with u32 kv values replaced and/or the last tensor's dims replaced.

    The last tensor is the one changed so every other tensor's offset stays
    valid: what the reader meets is only the claimed size.
    """
    g = malformed._parse(src.read_bytes())
    if kv:
        g.kvs = [(k, malformed._string(k) + struct.pack("<II", UINT32, kv[k]) if k in kv else rec) for k, rec in g.kvs]
    if last_ne is not None:
        g.tensors[-1] = dataclasses.replace(g.tensors[-1], ne=last_ne)
    dst.write_bytes(g.to_bytes())
    return dst


def _last_tensor(src: Path) -> tuple[str, list[int]]:
    t = malformed._parse(src.read_bytes()).tensors[-1]
    return t.name.decode(), t.ne


@pytest.mark.parametrize("backend", BACKENDS)
def test_gigantic_tensor_dims_are_refused(small_model: Path, tmp_path: Path, backend: str, growth: _Growth) -> None:
    # A tensor claiming ~2^50 bytes: the reader must compare it with the
    # file size, never allocate the data section it implies.
    name, ne = _last_tensor(small_model)
    bad = _rewrite(small_model, tmp_path / "huge.gguf", last_ne=[ne[0], 2**40])
    with pytest.raises(errors.ModelLoadError, match=rf"truncated tensor data: tensor '{re.escape(name)}' needs bytes \[\d+, \d{{13,}}\)"):
        bn.BitnetSession.create(bad, n_ctx=16, backend=backend)


def test_tensor_dims_whose_size_overflows_are_refused(small_model: Path, tmp_path: Path, growth: _Growth) -> None:
    name, ne = _last_tensor(small_model)
    bad = _rewrite(small_model, tmp_path / "overflow.gguf", last_ne=[ne[0], 2**62])
    with pytest.raises(errors.ModelLoadError, match=rf"tensor '{re.escape(name)}'.*overflow"):
        bn.BitnetSession.create(bad, n_ctx=16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absurd_block_count_is_refused_before_the_layer_table(small_model: Path, tmp_path: Path, backend: str, growth: _Growth) -> None:
    # Found by this test: block_count (up to 2^24) sized a zero-filled layer
    # table (6 GB for 2^24) before any tensor of those layers was looked up.
    bad = _rewrite(small_model, tmp_path / "blocks.gguf", kv={b"bitnet.block_count": 2**24})
    with pytest.raises(errors.ModelLoadError, match=r"block_count=16777216 needs at least \d+ tensors .* and a \d+-byte layer table, but the file has only \d+ tensors"):
        bn.BitnetSession.create(bad, n_ctx=16, backend=backend)


@pytest.mark.parametrize("key", [b"bitnet.context_length", b"bitnet.embedding_length", b"bitnet.feed_forward_length", b"bitnet.attention.head_count"])
def test_out_of_range_hyperparameters_are_refused(small_model: Path, tmp_path: Path, key: bytes, growth: _Growth) -> None:
    bad = _rewrite(small_model, tmp_path / "hparam.gguf", kv={key: 2**32 - 1})
    with pytest.raises(errors.ModelLoadError, match=rf"key '{re.escape(key.decode())}' = 4294967295 is out of range"):
        bn.BitnetSession.create(bad, n_ctx=0)  # 0: the model's own context length


def test_large_model_context_length_is_refused_at_create(tiny_model: Path, tmp_path: Path, growth: _Growth) -> None:
    # In range for the reader (<= 2^24), but n_ctx=0 takes it: 32 GiB of KV
    # cache for the default tiny model (2 layers x 2 KV heads x 64 x 2 x 4
    # bytes per position), which the pre-check must refuse, not allocate.
    model = _rewrite(tiny_model, tmp_path / "longctx.gguf", kv={b"bitnet.context_length": 2**24})
    need = 2**24 * 2048
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need <= phys:
        pytest.skip(f"this machine has {phys} bytes: {need} fits, so the pre-check rightly allows it")
    with pytest.raises(errors.OutOfMemory, match=rf"n_ctx={2**24} needs {need} bytes for the KV cache.*lower n_ctx"):
        bn.BitnetSession.create(model, n_ctx=0)


# ---- a real shortage: RLIMIT_AS in a child --------------------------------------------------


def _under_asan() -> bool:
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def test_lowered_address_space_limit_fails_cleanly(small_model: Path) -> None:
    headroom = 256 * 2**20
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if _under_asan():
        # ASan's allocator aborts on a failed mmap unless told to return NULL.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":allocator_may_return_null=1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "rlimit_child.py"), str(small_model), str(headroom), str(KV_BYTES_PER_POSITION)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"child crashed or failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    whole, in_limit, small = out["results"]
    print(f"RLIMIT_AS={out['limit']}: {json.dumps(out['results'], indent=1)}")
    for r in (whole, in_limit):
        assert not r["ok"] and r["class"] == "OutOfMemory", r
        assert re.search(_kv_message(r["n_ctx"]), r["message"]), r["message"]
    if not _under_asan():  # under ASan the address space is mostly shadow: the limit is above physical memory
        assert "RLIMIT_AS" in whole["message"], whole["message"]
    assert small["ok"], f"a small session failed after the refused ones: {small}"
    for key in LEAK_COUNTERS:
        assert out["after"][key] == out["baseline"][key], (key, out["baseline"], out["after"])
