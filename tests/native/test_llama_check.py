"""The llama check (native/check/llama_check.c, issue 13 item 5): a well-formed GGUF
file that would kill or hang llama.cpp is refused before llama.cpp sees it, with a
ModelLoadError naming the key or tensor, its value and what llama.cpp requires.

Before the check each case below took the process down under backend="llama"
(SIGABRT from a GGML_ASSERT, std::terminate from an uncaught exception, SIGSEGV)
or spun inside one ggml kernel past any deadline.  So every case runs in a child
process first (tests/llama_batch.py): a crash fails the test, never the run; only
a case the child survived runs in this process too, where it must raise
ModelLoadError naming the key with the live counters back where they were.

Also here: each rule through bn_check_for_llama itself (no llama.cpp needed);
valid models, including ones the reference engine cannot run, still loading
through llama.cpp; the vocabulary-only path and the fallback tier; and a bounded
structure-aware mutation loop over hyperparameters, vocabularies and tensor types
in which llama.cpp must never take the process down.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import fault_inject as fi
import pytest_bitnet as bn
from pytest_bitnet import errors
from pytest_bitnet.bridge import abi
from pytest_bitnet.bridge.counters import LEAK_COUNTERS, delta
from pytest_bitnet.bridge.llama import configured
from pytest_bitnet.testing.malformed import Gguf

from .. import llama_batch

LLAMA = configured()
needs_llama = pytest.mark.skipif(not LLAMA.available, reason=f"llama.cpp backend unavailable: {LLAMA.reason}")

U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9
GGML_F16, GGML_Q8_K, GGML_I32 = 1, 15, 26


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BITNET_BACKEND", "BITNET_FORCE_LLAMA_FALLBACK", "BITNET_FALLBACK", "BITNET_LLAMA_KV"):
        monkeypatch.delenv(var, raising=False)


# ---- the cases: one hostile value each, everything else valid -------------------------


def _heads(g: Gguf, n_head: int, n_head_kv: int) -> Gguf:
    """g with other head counts and attention tensors shaped for them (so llama.cpp's own shape checks pass)."""
    n_embd = g.tensor("token_embd.weight").ne[0]  # from the tensors: a mutant's metadata may say anything
    hd = n_embd // n_head
    g.set("{arch}.attention.head_count", n_head, U32).set("{arch}.attention.head_count_kv", n_head_kv, U32)
    for i in range(sum(t.name.endswith(".attn_q.weight") for t in g.tensors)):
        g.retype(f"blk.{i}.attn_q.weight", 0, [n_embd, hd * n_head])
        g.retype(f"blk.{i}.attn_k.weight", 0, [n_embd, hd * n_head_kv])
        g.retype(f"blk.{i}.attn_v.weight", 0, [n_embd, hd * n_head_kv])
        g.retype(f"blk.{i}.attn_output.weight", 0, [hd * n_head, n_embd])
        if g.arch == "bitnet":
            g.retype(f"blk.{i}.attn_sub_norm.weight", 0, [hd * n_head])
    return g


def _vocab(g: Gguf, n: int) -> Gguf:
    """g with its first n tokens only (tables and embeddings cut to match)."""
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        g.kvs[key].value = list(g.kvs[key].value)[:n]  # type: ignore[call-overload]
    for key in ("bos", "eos", "unknown"):
        g.set(f"tokenizer.ggml.{key}_token_id", 0)
    return g.retype("token_embd.weight", 0, [int(g.tensor("token_embd.weight").ne[0]), n])


def _rename_tokens(g: Gguf, pick: Callable[[str], bool]) -> Gguf:
    tokens = list(g.kvs["tokenizer.ggml.tokens"].value)  # type: ignore[call-overload]
    g.kvs["tokenizer.ggml.tokens"].value = [f"renamed{i}" if pick(t) else t for i, t in enumerate(tokens)]
    return g


def _duplicate_token(g: Gguf) -> Gguf:
    tokens = g.kvs["tokenizer.ggml.tokens"].value
    tokens[301] = tokens[300]  # type: ignore[index]
    return g


def _cut(key: str, n: int) -> Callable[[Gguf], Gguf]:
    def edit(g: Gguf) -> Gguf:
        return g.set(key, list(g.kvs[key].value)[:-n])  # type: ignore[call-overload]

    return edit


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Gguf], Gguf]
    fragment: str  # in the ModelLoadError: names the key or tensor and the value
    arch: str = "bitnet"
    n_ctx: int = 64
    check: bool = True  # a rule of bn_check_for_llama (False: the adapter's own)
    crashed: str = ""  # how llama.cpp failed before the check, for the record


A = "{arch}."
CASES = [
    Case("block_count_0", lambda g: g.set(A + "block_count", 0), "'bitnet.block_count' = 0",
         crashed="GGML_ASSERT(n_layer > 0 && n_layer <= LLAMA_MAX_LAYERS)"),
    Case("block_count_513", lambda g: g.set(A + "block_count", 513), "'bitnet.block_count' = 513", crashed="same assert"),
    Case("llama_block_count_0", lambda g: g.set(A + "block_count", 0), "'llama.block_count' = 0", arch="llama", crashed="same assert"),
    Case("rope_dimension_odd", lambda g: g.set(A + "rope.dimension_count", 63, U32), "'bitnet.rope.dimension_count' = 63",
         crashed="GGML_ASSERT(n_dims % 2 == 0) in the RoPE kernel"),
    Case("rope_dimension_oversized", lambda g: g.set(A + "rope.dimension_count", 256, U32),
         "'bitnet.rope.dimension_count' = 256", crashed="GGML_ASSERT(n_dims <= ne0)"),
    Case("rope_dimension_0", lambda g: g.set(A + "rope.dimension_count", 0, U32), "'bitnet.rope.dimension_count' = 0",
         crashed="evaluate spins at 100% CPU in one kernel, ignoring the timeout"),
    Case("epsilon_negative", lambda g: g.set(A + "attention.layer_norm_rms_epsilon", -1e-5),
         "'bitnet.attention.layer_norm_rms_epsilon' = -1e-05", crashed="GGML_ASSERT(eps >= 0.0f)"),
    Case("epsilon_nan", lambda g: g.set(A + "attention.layer_norm_rms_epsilon", math.nan),
         "'bitnet.attention.layer_norm_rms_epsilon' = nan", crashed="GGML_ASSERT(eps >= 0.0f)"),
    Case("llama_epsilon_negative", lambda g: g.set(A + "attention.layer_norm_rms_epsilon", -1.0),
         "'llama.attention.layer_norm_rms_epsilon' = -1", arch="llama", crashed="GGML_ASSERT(eps >= 0.0f)"),
    # alignment 1 (the same assert) is the strict reader's own refusal: test_the_layout_is_the_strict_readers
    Case("alignment_8", lambda g: g.set("general.alignment", 8, U32), "not a multiple of 32",
         crashed="GGML_ASSERT: buffer pointer must be aligned"),
    Case("scores_shorter_than_tokens", _cut("tokenizer.ggml.scores", 5), "'tokenizer.ggml.scores' has 507 entries for 512 tokens",
         crashed="(this libllama refuses it, with a message that did not reach the caller)"),
    Case("token_types_shorter_than_tokens", _cut("tokenizer.ggml.token_type", 5),
         "'tokenizer.ggml.token_type' has 507 entries for 512 tokens", crashed="(as above)"),
    Case("duplicate_token", _duplicate_token, "twice (tokens 300 and 301)",
         crashed="GGML_ASSERT(id_to_token.size() == token_to_id.size())"),
    Case("one_token_vocabulary", lambda g: _vocab(g, 1), "no token for byte 0x00",
         crashed="std::out_of_range (unordered_map::at) through llama_tokenize: std::terminate"),
    Case("spm_without_byte_tokens", lambda g: _rename_tokens(g, lambda t: t.startswith("<0x")), "no token for byte 0x00",
         crashed="std::out_of_range on the first character outside the vocabulary"),
    Case("spm_one_byte_token_missing", lambda g: _rename_tokens(g, lambda t: t == "<0xF0>"), "no token for byte 0xF0",
         crashed="std::out_of_range on the first byte of an emoji"),
    Case("wpm_with_byte_tokens", lambda g: g.set("tokenizer.ggml.model", "bert"), "typed BYTE (6)",
         crashed="GGML_ABORT(\"fatal error\") in token_to_byte while loading"),
    Case("rwkv_without_a_single_byte_token",
         lambda g: _rename_tokens(g.set("tokenizer.ggml.model", "rwkv"), lambda t: t == "r"),
         "but no token of that byte alone", crashed="tokenize loops without end on 'world', its output growing"),
    Case("i32_embeddings", lambda g: g.retype("token_embd.weight", GGML_I32), "'token_embd.weight' has type I32",
         crashed="GGML_ASSERT(*cur_backend_id != -1) in the scheduler"),
    Case("q8_k_projection", lambda g: g.retype("blk.0.ffn_down.weight", GGML_Q8_K), "'blk.0.ffn_down.weight' has type Q8_K",
         crashed="SIGSEGV in the matrix multiplication"),
    Case("f16_norm", lambda g: g.retype("blk.0.attn_norm.weight", GGML_F16), "'blk.0.attn_norm.weight' is a 1-D F16 tensor",
         crashed="abort: unsupported types in a binary op"),
    Case("rope_scaling_unknown", lambda g: g.set(A + "rope.scaling.type", "zzz", STR), "'bitnet.rope.scaling.type' = 'zzz'",
         crashed="GGML_ASSERT(rope_scaling_type_train != UNSPECIFIED)"),
    Case("experts_without_expert_used_count", lambda g: g.set(A + "expert_count", 4, U32), "expert_used_count must be at least 1",
         crashed="GGML_ASSERT(n_expert_used_max > 0)"),
    Case("expert_used_count_without_experts", lambda g: g.set(A + "expert_used_count", 2, U32),
         "expert_used_count must be 0 without experts", crashed="GGML_ASSERT(n_expert_used <= n_expert)"),
    Case("expert_groups_not_dividing",
         lambda g: g.set(A + "expert_count", 4, U32).set(A + "expert_used_count", 1, U32)
         .set(A + "expert_group_count", 3, U32).set(A + "expert_group_used_count", 1, U32),
         "expert_count must be a multiple of expert_group_count", crashed="GGML_ASSERT(n_expert % n_expert_groups == 0)"),
    Case("head_count_not_a_multiple_of_kv_heads", lambda g: _heads(g, 4, 3), "head_count = 4 is not a multiple of attention.head_count_kv = 3",
         arch="llama", crashed="GGML_ASSERT(ggml_can_mul_mat(a, b))"),
    Case("odd_head_size", lambda g: _heads(g, 3, 1), "the key head size of this llama model is 85", arch="llama",
         crashed="GGML_ASSERT(n_dims % 2 == 0)"),
    Case("key_length_not_the_head_size", lambda g: g.set(A + "attention.key_length", 32, U32), "'bitnet.attention.key_length' = 32",
         crashed="GGML_ASSERT(n_embd_head == hparams.n_embd_head_k()) in the bitnet graph"),
    Case("no_kv_heads_in_a_layer", lambda g: g.set(A + "attention.head_count_kv", [2, 0], ARR, U32),
         "layer 1: bitnet.attention.head_count_kv = 0", crashed="GGML_ASSERT(ggml_nelements(a) == ne0*ne1)"),
    Case("per_layer_head_count_of_floats", lambda g: g.set(A + "attention.head_count", [4.0, 4.0], ARR, F32),
         "'bitnet.attention.head_count' is an array of f32", crashed="(refused by this libllama, the reason only in its log)"),
    Case("context_length_wraps", lambda g: g.set(A + "context_length", 2**31), "context_length (read back as -2147483648)", n_ctx=0,
         check=False, crashed="the adapter sized the context from it: a hang allocating 2^31 KV cells"),
]  # fmt: skip


@pytest.fixture(scope="module")
def case_files(tmp_path_factory: pytest.TempPathFactory, make_model: Callable[..., Path]) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llama-check")
    bases = {arch: make_model(arch=arch) for arch in ("bitnet", "llama")}
    return {c.id: c.edit(Gguf.read(bases[c.arch])).write(out / f"{c.id}.gguf") for c in CASES}


def test_the_cases_are_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if c.check], ids=lambda c: c.id)
def test_the_check_refuses(case: Case, case_files: dict[str, Path]) -> None:
    # The rule itself, below any backend: what the adapter asks the bridge for.
    before = bn.live_counters()
    rc = abi.lib.bn_check_for_llama(os.fsencode(case_files[case.id]), 0)
    with pytest.raises(errors.ModelLoadError, match=re.escape(case.fragment)) as exc:
        abi.raise_for_code(rc, "check")
    assert f"'{case_files[case.id]}' refused before llama.cpp loads it" in str(exc.value)
    assert delta(before, bn.live_counters(), LEAK_COUNTERS) == {}


@pytest.fixture(scope="module")
def llama_outcomes(case_files: dict[str, Path]) -> dict[str, llama_batch.Outcome]:
    outcomes = llama_batch.run(llama_batch.Job(case_files[c.id], n_ctx=c.n_ctx) for c in CASES)
    return {c.id: o for c, o in zip(CASES, outcomes)}


@needs_llama
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_llama_refuses_cleanly(case: Case, case_files: dict[str, Path], llama_outcomes: dict[str, llama_batch.Outcome]) -> None:
    got = llama_outcomes[case.id]
    assert got.survived, f"llama.cpp took the process down on {case.id} ({case.crashed}): {got}"
    assert got.error_class == "ModelLoadError" and case.fragment in got.message, str(got)
    # the child survived it: now in this process, with the counters watched
    before = bn.live_counters()
    with pytest.raises(errors.ModelLoadError, match=re.escape(case.fragment)) as exc:
        bn.BitnetSession.create(case_files[case.id], n_ctx=case.n_ctx, backend="llama")
    assert exc.value.context.parameters["backend"] == "llama"
    assert delta(before, bn.live_counters(), LEAK_COUNTERS) == {}


def test_messages_say_what_why_and_how(case_files: dict[str, Path]) -> None:
    # what (the key and value), why (what llama.cpp would do), how (what to write instead)
    rc = abi.lib.bn_check_for_llama(os.fsencode(case_files["rope_dimension_odd"]), 0)
    with pytest.raises(errors.ModelLoadError) as exc:
        abi.raise_for_code(rc, "check")
    msg = str(exc.value)
    assert "= 63" in msg and "aborts the process" in msg and "set it to an even number <= 64" in msg
    assert msg.isascii()


def test_a_missing_file_is_model_not_found(tmp_path: Path) -> None:
    rc = abi.lib.bn_check_for_llama(os.fsencode(tmp_path / "absent.gguf"), 0)
    with pytest.raises(errors.ModelLoadError, match="not found"):
        abi.raise_for_code(rc, "check")


def test_the_layout_is_the_strict_readers(make_model: Callable[..., Path], tmp_path: Path) -> None:
    # The check reads with the reference engine's reader: its refusals come first.
    variants = bn.models.broken_variants(make_model(), tmp_path)
    for name in ("misaligned_offset", "small_alignment"):  # small_alignment crashed llama.cpp: GGML_ASSERT
        path, fragment = variants[name]
        rc = abi.lib.bn_check_for_llama(os.fsencode(path), 0)
        with pytest.raises(errors.ModelLoadError, match=re.escape(fragment)):
            abi.raise_for_code(rc, "check")


# ---- what must still load --------------------------------------------------------------


def _qwen2(g: Gguf) -> Gguf:
    """The llama model as llama.cpp's qwen2 (attention biases added): an architecture the reference engine lacks."""
    g.kvs = {("qwen2" + k[len("llama") :] if k.startswith("llama.") else k): v for k, v in g.kvs.items()}
    g.set("general.architecture", "qwen2")
    tensors = []
    for t in g.tensors:
        tensors.append(t)
        if t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight")):
            tensors.append(type(t)(t.name.replace(".weight", ".bias"), [t.ne[1]], 0, bytes(4 * t.ne[1])))
    g.tensors = tensors
    return g


def _q8_0(g: Gguf) -> Gguf:
    """Projections as Q8_0: a quantization the reference engine lacks."""
    for t in list(g.tensors):
        if t.name.startswith("blk.") and len(t.ne) == 2:
            g.retype(t.name, 8, fill=0x11)
    return g


VALID = {
    "bitnet_tq2_0": ({"arch": "bitnet"}, None),
    "bitnet_f16": ({"arch": "bitnet", "weight_type": "f16"}, None),
    "bitnet_f32": ({"arch": "bitnet", "weight_type": "f32"}, None),
    "bitnet_f16_embeddings": ({"arch": "bitnet", "embd_type": "f16"}, None),
    "llama_tq2_0": ({"arch": "llama"}, None),
    "llama_f16": ({"arch": "llama", "weight_type": "f16"}, None),
    "llama_gqa_1_kv_head": ({"arch": "llama", "n_head": 4, "n_head_kv": 1}, None),
    "llama_q8_0": ({"arch": "llama", "weight_type": "f16"}, _q8_0),
    "qwen2": ({"arch": "llama", "weight_type": "f16"}, _qwen2),
}


@needs_llama
@pytest.mark.parametrize("name", VALID)
def test_valid_models_still_load(name: str, make_model: Callable[..., Path], tmp_path: Path) -> None:
    params, edit = VALID[name]
    path = make_model(**params)
    if edit is not None:
        path = edit(Gguf.read(path)).write(tmp_path / f"{name}.gguf")
        # the reference engine cannot run these: the check is about llama.cpp, not about it
        with pytest.raises(errors.ModelLoadError):
            bn.BitnetSession.create(path, backend="reference")
    assert abi.lib.bn_check_for_llama(os.fsencode(path), 0) == 0, abi.last_error()
    [outcome] = llama_batch.run([llama_batch.Job(path)])
    assert outcome.survived and outcome.error_class is None, str(outcome)
    with bn.BitnetSession.create(path, n_ctx=64, backend="llama") as s:
        logits = s.evaluate(s.tokenize("What is 2+2?"))
        assert logits.shape[0] > 1


# ---- the other paths into llama.cpp -----------------------------------------------------


@needs_llama
def test_vocabulary_only_loads_check_the_vocabulary_alone(case_files: dict[str, Path], tiny_model: Path) -> None:
    # Per-call tokenize loads the vocabulary only (llama.cpp's vocab_only reads no
    # hyperparameters and no tensors): a file with no layers tokenizes as before ...
    assert abi.lib.bn_check_for_llama(os.fsencode(case_files["block_count_0"]), 1) == 0
    expected = bn.tokenize(tiny_model, "hello", backend="llama")
    assert list(bn.tokenize(case_files["block_count_0"], "hello", backend="llama")) == list(expected)
    # ... and a vocabulary llama.cpp's tokenizer would die on is refused there too
    jobs = [llama_batch.Job(case_files["spm_without_byte_tokens"], op="tokenize")]
    [outcome] = llama_batch.run(jobs)
    assert outcome.survived, f"per-call tokenize took the process down: {outcome}"
    assert outcome.error_class == "ModelLoadError" and "no token for byte 0x00" in outcome.message, str(outcome)
    with pytest.raises(errors.ModelLoadError, match="no token for byte 0x00"):
        bn.tokenize(case_files["spm_without_byte_tokens"], "hello", backend="llama")


@needs_llama
def test_the_llama_fallback_tier_is_checked(case_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference engine ignores rope.scaling.type; llama.cpp, serving as the
    # fallback tier of a reference session, asserted on it.
    path = case_files["rope_scaling_unknown"]
    with bn.BitnetSession.create(path, n_ctx=64, backend="reference"):
        pass
    env = (("BITNET_FORCE_LLAMA_FALLBACK", "1"), ("BITNET_FALLBACK", "llama"))
    [outcome] = llama_batch.run([llama_batch.Job(path, backend="reference", env=env)])
    assert outcome.survived, f"the fallback tier took the process down: {outcome}"
    assert outcome.error_class == "ModelLoadError" and "'bitnet.rope.scaling.type' = 'zzz'" in outcome.message, str(outcome)
    for name, value in env:
        monkeypatch.setenv(name, value)
    with pytest.raises(errors.ModelLoadError, match=re.escape("'bitnet.rope.scaling.type' = 'zzz'")):
        bn.BitnetSession.create(path, n_ctx=64, backend="reference")


@needs_llama
@pytest.mark.parametrize("point, action", [("alloc", "oom"), ("load.step", "fail")])
def test_every_failure_inside_the_check_is_clean(point: str, action: str, tiny_model: Path) -> None:
    # The check allocates (counted) and steps (under the caller's deadline) on the
    # calling thread: failing each hit in turn over a llama create gives a clean
    # error with the counters back, and the run that fires nothing works.
    def create_close() -> None:
        bn.BitnetSession.create(tiny_model, n_ctx=16, backend="llama").close()

    report = fi.sweep(point, create_close, action=action)
    assert report.ok, report.describe(failures_only=True)
    assert report.sites > 0


@needs_llama
def test_an_explicit_n_ctx_beyond_llama_cpp_is_refused(tiny_model: Path) -> None:
    # 8 sequences of n_ctx positions in one context of 32-bit positions: before,
    # 8 * 2^28 wrapped to 2^31 cells and llama.cpp set out to allocate them
    fragment = "n_ctx=268435456 is more than the 268435455 positions"
    [outcome] = llama_batch.run([llama_batch.Job(tiny_model, n_ctx=2**28)], job_seconds=60)
    assert outcome.survived and outcome.error_class == "InvalidArgument" and fragment in outcome.message, str(outcome)
    with pytest.raises(errors.InvalidArgument, match=fragment):
        bn.BitnetSession.create(tiny_model, n_ctx=2**28, backend="llama")


# ---- fuzzing: hostile values in a valid layout -----------------------------------------

FUZZ_FILES = 250  # 10-25 s on 2 shared cores: creating each llama.cpp context dominates
FUZZ_SECONDS = 60.0  # the loop stops generating after this long, whatever the count
FUZZ_SEED = int(os.environ.get("BITNET_LLAMA_FUZZ_SEED", "20261201"))

INTS = [0, 1, 2, 3, 7, 8, 63, 64, 65, 127, 128, 255, 256, 511, 512, 513, 1024, 2**16, 2**31 - 1, 2**31, 2**32 - 1]
FLOATS = [0.0, -0.0, 1e-30, 1e-5, -1e-5, 1.0, -1.0, 1e30, -1e30, math.inf, -math.inf, math.nan]
INT_KEYS = [
    "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "rope.dimension_count", "attention.key_length", "attention.value_length",
    "expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count", "vocab_size",
    "attention.sliding_window", "rope.scaling.original_context_length",
]  # fmt: skip
FLOAT_KEYS = [
    "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base", "rope.scaling.factor",
    "rope.scaling.attn_factor", "attention.clamp_kqv", "logit_scale", "embedding_scale", "final_logit_softcapping",
]  # fmt: skip
GGML_TYPES = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 34, 35, 39, 40, 41]


@dataclass
class Mutator:
    """Structure-aware mutations: the layout stays valid, one value turns hostile."""

    rng: random.Random
    log: list[str] = field(default_factory=list)

    def value(self) -> tuple[object, int, int | None]:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice(INTS), U32, None
        if r < 0.75:
            return self.rng.choice(FLOATS), F32, None
        if r < 0.82:
            return self.rng.choice([-1, -(2**31), 0, 5]), I32, None
        if r < 0.87:
            return self.rng.choice(["", "x", "llama"]), STR, None
        if r < 0.94:
            return [self.rng.choice(INTS[:12]) for _ in range(self.rng.choice([0, 1, 2, 3]))], ARR, U32
        return [self.rng.choice(FLOATS) for _ in range(2)], ARR, F32

    def hparam(self, g: Gguf) -> None:
        if self.rng.random() < 0.3:
            key = "{arch}." + self.rng.choice(FLOAT_KEYS)
            g.set(key, self.rng.choice(FLOATS), F32)
        elif self.rng.random() < 0.1:
            key = "{arch}.rope.scaling.type"
            g.set(key, self.rng.choice(["none", "linear", "yarn", "longrope", "zzz", ""]), STR)
        else:
            key = "{arch}." + self.rng.choice(INT_KEYS)
            v, vtype, arr_type = self.value()
            g.set(key, v, vtype, arr_type)
        self.log.append(f"{key}={g.kvs[key.replace('{arch}', g.arch)]}")

    def heads(self, g: Gguf) -> None:
        n_head = self.rng.choice([1, 2, 3, 4, 5, 8, 16, 64, 128, 256])
        n_kv = self.rng.choice([1, 2, 3, 4, n_head, max(1, n_head // 2)])
        _heads(g, n_head, n_kv)
        self.log.append(f"heads {n_head}/{n_kv}")

    def vocab(self, g: Gguf) -> None:
        tokens, types = g.kvs["tokenizer.ggml.tokens"].value, g.kvs["tokenizer.ggml.token_type"].value
        r = self.rng.random()
        if r < 0.25:
            i = self.rng.randrange(len(tokens))  # type: ignore[arg-type]
            tokens[i] = self.rng.choice(["", "<0x41>", "<0xZZ>", "\x00", "\u00e9", tokens[self.rng.randrange(len(tokens))]])  # type: ignore[index, arg-type]
            self.log.append(f"token {i} = {tokens[i]!r}")  # type: ignore[index]
        elif r < 0.45:
            i = self.rng.randrange(len(types))  # type: ignore[arg-type]
            types[i] = self.rng.choice([0, 1, 2, 3, 4, 5, 6, 7, -1, 99])  # type: ignore[index]
            self.log.append(f"token type {i} = {types[i]}")  # type: ignore[index]
        elif r < 0.7:
            model = self.rng.choice(["llama", "gpt2", "bert", "t5", "rwkv", "plamo2", "none"])
            g.set("tokenizer.ggml.model", model)
            if self.rng.random() < 0.5:
                g.set("tokenizer.ggml.merges", ["a b", "b c", " x", "", "\u00e9 \u00e9"], ARR, STR)
            self.log.append(f"tokenizer {model}")
        else:
            key = f"tokenizer.ggml.{self.rng.choice(['bos', 'eos', 'unknown', 'padding', 'seperator'])}_token_id"
            g.set(key, self.rng.choice([0, 1, 511, 512, 2**31, 2**32 - 1]), U32)
            self.log.append(f"{key}={g.kvs[key].value}")

    def tensor(self, g: Gguf) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        t = self.rng.choice(g.tensors)
        fits = [ty for ty in GGML_TYPES if t.ne[0] % GGML_QUANT_SIZES[GGMLQuantizationType(ty)][0] == 0]
        ty = self.rng.choice(fits)
        g.retype(t.name, ty, fill=self.rng.choice([0, 0x11, 0xFF]))
        self.log.append(f"{t.name} as type {ty}")

    def alignment(self, g: Gguf) -> None:
        g.set("general.alignment", self.rng.choice([8, 16, 32, 64, 256]), U32)
        self.log.append(f"alignment {g.kvs['general.alignment'].value}")

    def mutate(self, g: Gguf) -> None:
        ops = [self.hparam, self.heads, self.vocab, self.tensor, self.alignment]
        for op in self.rng.choices(ops, weights=[5, 1.5, 3, 2, 0.5], k=self.rng.choice([1, 1, 2, 3])):
            op(g)


@needs_llama
def test_fuzzing_never_takes_the_process_down(make_model: Callable[..., Path], tmp_path: Path) -> None:
    # Seeded (BITNET_LLAMA_FUZZ_SEED varies it); every mutant goes through
    # backend="llama" in a child: a success or a BitnetError, never a death or a hang.
    rng = random.Random(FUZZ_SEED)
    bases = [make_model(arch=a, weight_type=w) for a in ("bitnet", "llama") for w in ("tq2_0", "f16", "f32")]
    jobs, logs = [], {}
    start = time.monotonic()
    while len(jobs) < FUZZ_FILES and time.monotonic() - start < FUZZ_SECONDS:
        m = Mutator(rng)
        g = Gguf.read(rng.choice(bases))
        m.mutate(g)
        path = g.write(tmp_path / f"mutant-{len(jobs)}.gguf")
        jobs.append(llama_batch.Job(path, n_ctx=rng.choice([16, 64])))
        logs[path] = m.log
    outcomes = llama_batch.run(jobs)
    bad = [f"{j.path.name} {logs[j.path]}: {o}" for j, o in zip(jobs, outcomes) if not o.survived]  # type: ignore[union-attr]
    refused = sum(o.error_class is not None for o in outcomes)
    print(f"{len(jobs)} mutants (seed {FUZZ_SEED}) in {time.monotonic() - start:.1f} s: {refused} refused, {len(jobs) - refused} ran")
    assert not bad, f"llama.cpp took the process down on {len(bad)} of {len(jobs)} mutants:\n" + "\n".join(bad)
    assert len(jobs) >= 100, f"only {len(jobs)} mutants in {FUZZ_SECONDS} s"


# ---- vocabulary tables of the wrong type -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "items", "arr_type", "fragment"),
    [
        ("tokenizer.ggml.scores", "s", STR, "key 'tokenizer.ggml.scores' is not an array of f32: llama.cpp refuses it; write one f32 per token"),
        ("tokenizer.ggml.tokens", 7, I32, "key 'tokenizer.ggml.tokens' is not an array of strings: llama.cpp refuses it; write the vocabulary as one string per token"),
    ],
    ids=["scores-of-strings", "tokens-of-ints"],
)
def test_a_vocabulary_table_of_the_wrong_type_is_refused(tiny_model: Path, tmp_path: Path, key: str, items: object, arr_type: int, fragment: str) -> None:
    g = Gguf.read(tiny_model)
    n = len(g.kvs["tokenizer.ggml.tokens"].value)  # type: ignore[arg-type]
    path = g.set(key, [items] * n, ARR, arr_type).write(tmp_path / "m.gguf")
    before = bn.live_counters()
    rc = abi.lib.bn_check_for_llama(os.fsencode(path), 1)  # a vocabulary rule: vocab_only checks it too
    with pytest.raises(errors.ModelLoadError, match=re.escape(fragment)) as exc:
        abi.raise_for_code(rc, "check")
    assert f"'{path}' refused before llama.cpp loads it" in str(exc.value)
    assert delta(before, bn.live_counters(), LEAK_COUNTERS) == {}
