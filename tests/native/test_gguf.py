"""Malformed model files: a precise ModelLoadError every time, nothing leaked."""

from __future__ import annotations

import json
import os
import re
import struct
import time
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


# ---- deadlines inside the load ------------------------------------------------------------------


def _write_vocab_file(path: Path, n_tokens: int) -> None:
    """A valid llama GGUF whose size is its vocabulary (one 8-float tensor),
    written with struct: gguf-py takes ~10 s over two million strings."""

    def s(text: bytes) -> bytes:
        return struct.pack("<Q", len(text)) + text

    def kv(key: str, vtype: int, value: bytes) -> bytes:
        return s(key.encode()) + struct.pack("<I", vtype) + value

    u32 = lambda v: struct.pack("<I", v)  # noqa: E731
    tokens = [b"<unk>", b"<s>", b"</s>"] + [b"t%d" % i for i in range(n_tokens - 3)]
    kvs = [
        kv("general.architecture", 8, s(b"llama")),
        *(kv(f"llama.{k}", 4, u32(v)) for k, v in [("context_length", 64), ("embedding_length", 8), ("block_count", 1),
                                                  ("feed_forward_length", 8), ("attention.head_count", 1)]),
        kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        kv("tokenizer.ggml.model", 8, s(b"llama")),
        kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, n_tokens) + b"".join(map(s, tokens))),
        kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, n_tokens) + bytes(4 * n_tokens)),
        kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, n_tokens) + struct.pack("<i", 1) * n_tokens),
        *(kv(f"tokenizer.ggml.{k}", 4, u32(v)) for k, v in [("unknown_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2)]),
    ]
    out = bytearray(struct.pack("<4sIQQ", b"GGUF", 3, 1, len(kvs)) + b"".join(kvs))
    out += s(b"x") + struct.pack("<IqIQ", 1, 8, 0, 0)  # F32 [8] at offset 0
    out += bytes(-len(out) % 32) + bytes(32)
    path.write_bytes(out)


def test_a_huge_vocabulary_is_loaded_under_the_deadline(tmp_path: Path) -> None:
    # The reader read a whole string array, and the vocabulary was built from
    # it, without one deadline check: a hostile file (up to 2^30 strings) ran
    # for as long as it liked.  Deadlines at growing fractions of an untimed
    # call fall in turn while the token strings are read and while the
    # vocabulary is built; the message says where the load noticed each.
    # Before, only the steps around the stretches could (the end of the kv
    # pairs, the tokenizer after the load); the timing only picks the stage,
    # so the test does not depend on this machine's speed.
    path = tmp_path / "huge-vocab.gguf"
    _write_vocab_file(path, 1_000_000)
    tokens_end = path.read_bytes().index(b"tokenizer.ggml.scores") - 8  # the kv pair after the strings
    bn.tokenize(path, "t1 t2")  # warm: the file in the page cache
    start = time.monotonic()
    bn.tokenize(path, "t1 t2")
    full = time.monotonic() - start
    in_strings = in_vocabulary = False
    for fraction in (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45) * 3:
        timeout = fraction * full
        start = time.monotonic()
        with pytest.raises(errors.OperationTimeout, match="timed out") as exc:
            bn.tokenize(path, "t1 t2", timeout=timeout)
        assert time.monotonic() - start < timeout + 2.0
        message = exc.value.context.native_message
        m = re.search(r"load aborted while reading kv pairs at offset (\d+)", message)
        in_strings |= bool(m) and int(m[1]) < tokens_end
        in_vocabulary |= "load aborted while building the vocabulary (token " in message
        if in_strings and in_vocabulary:
            break
    assert in_strings, "no deadline was noticed while the token strings were read"
    assert in_vocabulary, "no deadline was noticed while the vocabulary was built"


# ---- what is at the path ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_path_that_is_not_a_regular_file_is_refused(kind: str, tmp_path: Path) -> None:
    # a FIFO with no writer is opened without waiting (O_NONBLOCK) and refused
    if kind == "device":
        path = Path("/dev/null")
    else:
        path = tmp_path / "model.gguf"
        os.mkfifo(path)
    before = bn.live_counters()["bytes"]
    for load in (lambda: bn.BitnetSession.create(path), lambda: bn.tokenize(path, "x")):
        with pytest.raises(errors.ModelLoadError) as exc:
            load()
        assert f"'{path}': not a regular file (a device, FIFO or socket); pass the path of a .gguf file" in str(exc.value)
        assert exc.value.context.native_code == -3
    assert bn.live_counters()["bytes"] == before


def test_the_reader_refuses_a_null_path() -> None:
    # bn_check_for_llama hands its path to the reader as it is: the reader's
    # own argument check answers
    from pytest_bitnet.bridge.abi import ffi, lib

    assert lib.bn_check_for_llama(ffi.NULL, 0) == lib.BITNET_E_INVALID_ARG
    buf = ffi.new("char[]", 256)
    lib.bitnet_cpp_get_last_error(buf, len(buf))
    assert ffi.string(buf).decode() == "bn_gguf_open: path is NULL"


# In a child process, fstat() of one file fails with EIO (an I/O error of
# the filesystem: a network mount that went away, a failing disk) while
# open() succeeded: an LD_PRELOAD wrapper in the manner of libfiu's
# preload library, for the reader's only check that no file on a healthy
# machine can fail.
_FSTAT_FAILS = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int refused(int fd)
{
    const char *want = getenv("FSTAT_FAILS_FOR");
    char link[64], path[PATH_MAX];
    if (!want)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    return strcmp(path, want) == 0;
}

#define WRAP(name, type)                                                     \
    int name(int fd, type *buf)                                              \
    {                                                                        \
        static int (*real)(int, type *);                                     \
        if (refused(fd)) {                                                   \
            errno = EIO;                                                     \
            return -1;                                                       \
        }                                                                    \
        if (!real)                                                           \
            real = (int (*)(int, type *))dlsym(RTLD_NEXT, #name);            \
        return real(fd, buf);                                                \
    }
WRAP(fstat, struct stat)
WRAP(fstat64, struct stat64)
"""
_CREATE = r"""
import json, sys
import pytest_bitnet as bn
from pytest_bitnet.bridge.counters import LEAK_COUNTERS
try:
    bn.BitnetSession.create(sys.argv[1], n_ctx=16).close()
    out = {"loaded": True}
except bn.BitnetError as exc:
    out = {"class": type(exc).__name__, "message": str(exc), "code": exc.context.native_code}
live = bn.live_counters()
print(json.dumps({"result": out, "live": {k: live[k] for k in LEAK_COUNTERS}}))
"""


def test_a_file_that_cannot_be_stat_ed_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the fstat wrapper")
    (tmp_path / "fstat_fails.c").write_text(_FSTAT_FAILS)
    shim = tmp_path / "fstat_fails.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(tmp_path / "fstat_fails.c"), "-o", str(shim), "-ldl"], check=True)
    model = tmp_path / "model.gguf"
    shutil.copyfile(tiny_model, model)
    model = model.resolve()  # as /proc/self/fd shows it
    # after any preload already there (a sanitizer's runtime must stay first)
    preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), str(shim)) if p)
    env = dict(os.environ, LD_PRELOAD=preload, FSTAT_FAILS_FOR=str(model))
    proc = subprocess.run([sys.executable, "-c", _CREATE, str(model)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    # (a session only: the per-call tokenize's own fstat, in the bridge's
    # file-identity check, fails first)
    r = result["result"]
    assert r.get("class") == "ModelLoadError", result
    assert f"'{model}': cannot stat the model file: Input/output error" in r["message"]
    assert r["code"] == -3
    assert set(result["live"].values()) == {0}, result
    # the same file without the wrapper loads: only the failing fstat was refused
    assert bn.tokenize(model, "x").tolist()[0] == 1
