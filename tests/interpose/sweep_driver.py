"""Sweeps llama-cpp-python's own error paths through the interposing libllama (a child process).

    python tests/interpose/sweep_driver.py MODELS_JSON [SCENARIO ...]

MODELS_JSON names the models ({"tiny": path, "chat": path, "lora": path}: the
project's tiny bitnet TQ2_0 model, the same with a tokenizer.chat_template,
and a LoRA adapter GGUF for it).
Enables the interposer *before* importing llama_cpp (llama-cpp-python binds
its library once, at import), runs each scenario (all by default) and
prints one JSON object: scenario -> its sweep report (or probe result).

A scenario is one error path: a libllama function (the point), how it fails
(the action), and what llama-cpp-python code reaches it (the body).  Every
sweep iteration checks what a correct client guarantees: success with the
right result, or llama-cpp-python's own exception (ValueError /
RuntimeError) with nothing left alive (the interposer's llama_* counters are
in the harness's leak check).  A body raises AssertionError when a call
*returned* a wrong result: the sweep reports that iteration as "unexpected",
which is how a short buffer read as a full one shows up.  Sweeps whose
failure is a NULL pointer llama.cpp dereferences run forked (a crash is that
iteration's result).

tests/interpose/test_llama_cpp_python_sweep.py runs this and asserts the
findings (tests/interpose/FINDINGS.md).
"""

from __future__ import annotations

import ctypes
import json
import sys
import tracemalloc
from dataclasses import asdict
from typing import Any, Callable

import fault_inject as fi
import fault_inject.interpose as interpose

interpose.enable("llama")  # before llama_cpp is imported: it loads the interposing copy

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

MODELS: dict[str, str] = json.loads(sys.argv[1])
EXPECTED = (ValueError, RuntimeError)  # llama-cpp-python's own error types


def llama(which: str = "tiny") -> Llama:
    return Llama(model_path=MODELS[which], n_ctx=64, n_threads=1, verbose=False)


def complete(llm: Llama) -> str:
    out = llm.create_completion("hello world", max_tokens=3, temperature=0.0)
    return out["choices"][0]["text"]


# ---- reference results, computed with nothing armed ---------------------------------------

_ref = llama("chat")
REF_METADATA = dict(_ref.metadata)
REF_CHAT_FORMAT = _ref.chat_format
REF_TOKENS = _ref.tokenize(b"hello world, how are you")
REF_TEXT = _ref.detokenize(REF_TOKENS)
_ref.close()
del _ref
SHARED = llama()  # for paths that need a live Llama, made outside the sweep's baseline


# ---- bodies: llama-cpp-python code on the path -------------------------------------------


def load() -> None:
    llama().close()


def load_and_complete() -> None:
    llm = llama()
    try:
        complete(llm)
    finally:
        llm.close()


def tokenize() -> None:
    got = SHARED.tokenize(b"hello world, how are you")
    assert got == REF_TOKENS, f"tokenize returned {got!r} instead of {REF_TOKENS!r} without an error"


def detokenize() -> None:
    got = SHARED.detokenize(REF_TOKENS)
    assert got == REF_TEXT, f"detokenize returned {got!r} instead of {REF_TEXT!r} without an error"


def metadata() -> None:
    llm = llama("chat")
    try:
        md, fmt = dict(llm.metadata), llm.chat_format
    finally:
        llm.close()
    wrong = {k: (REF_METADATA.get(k), md.get(k)) for k in set(md) | set(REF_METADATA) if md.get(k) != REF_METADATA.get(k)}
    if wrong:
        k = sorted(wrong)[0]
        want, got = wrong[k]
        short = lambda v: v if v is None or len(v) <= 40 else f"{v[:20]}...({len(v)} chars)"  # noqa: E731
        raise AssertionError(
            f"metadata wrong without an error: {k!r} is {short(got)!r}, not {short(want)!r}"
            + (f"; chat format {fmt!r} instead of {REF_CHAT_FORMAT!r}" if fmt != REF_CHAT_FORMAT else "")
        )


def load_with_lora() -> None:
    # Llama(lora_path=...): llama_adapter_lora_init, then llama_set_adapters_lora
    llm = Llama(model_path=MODELS["tiny"], lora_path=MODELS["lora"], n_ctx=64, n_threads=1, verbose=False)
    try:
        complete(llm)
    finally:
        llm.close()


def save_state() -> None:
    SHARED.reset()
    SHARED.eval(REF_TOKENS[:4])
    state = SHARED.save_state()
    assert state.llama_state_size > 0, f"save_state returned a state of {state.llama_state_size} bytes without an error"


def load_state() -> None:
    SHARED.reset()
    SHARED.eval(REF_TOKENS[:4])
    state = SHARED.save_state()
    SHARED.load_state(state)


# ---- scenarios: (point, action, body, fork) ----------------------------------------------

SWEEPS: dict[str, tuple[str, str, Callable[[], object], bool]] = {
    "model_load": ("llama_model_load_from_file", "fail", load, False),
    "model_vocab": ("llama_model_get_vocab", "fail", load, False),
    "context": ("llama_init_from_model", "fail", load, False),
    "batch": ("llama_batch_init", "fail", load_and_complete, False),
    "decode": ("llama_decode", "fail", load_and_complete, False),
    "tokenize_grow": ("llama_tokenize", "grow(8)", tokenize, False),
    "detokenize_grow": ("llama_token_to_piece", "grow(8)", detokenize, False),
    "metadata_grow": ("llama_model_meta_val_str_by_index", "grow(1)", metadata, False),
    "metadata_fail": ("llama_model_meta_val_str_by_index", "fail", metadata, False),
    "metadata_key_fail": ("llama_model_meta_key_by_index", "fail", metadata, False),
    "sampler_chain": ("llama_sampler_chain_init", "fail", load_and_complete, True),
    "sampler_greedy": ("llama_sampler_init_greedy", "fail", load_and_complete, True),
    "lora": ("llama_adapter_lora_init", "fail", load_with_lora, True),
    "state_save": ("llama_state_get_data", "fail", save_state, False),
    "state_load": ("llama_state_set_data", "fail", load_state, False),
}


def run_sweep(point: str, action: str, body: Callable[[], object], fork: bool) -> dict[str, Any]:
    report = fi.sweep(point, body, action=action, fork=fork, timeout=120 if fork else None, expected=EXPECTED, max_iterations=64)
    return {
        "point": point,
        "action": action,
        "complete": report.complete,
        "ok": report.ok,
        "summary": report.summary(),
        "text": report.describe(),
        "iterations": [{k: v for k, v in asdict(it).items() if k != "stderr"} for it in report.iterations],
    }


# ---- probes: one armed call, measured --------------------------------------------------------


def probe_tokenize_fail() -> dict[str, Any]:
    """llama_tokenize's documented failure (INT32_MIN) read as a size."""
    tracemalloc.start()
    error = message = None
    with fi.inject("llama_tokenize=1*fail") as armed:
        try:
            SHARED.tokenize(b"hello")
        except Exception as exc:  # noqa: BLE001 - what it raised is the result
            error, message = type(exc).__name__, str(exc)[:200]
        hits = armed.hits()["llama_tokenize"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"error": error, "message": message, "peak_bytes": peak, "hits": hits}


def probe_chat_template() -> dict[str, Any]:
    """Does llama-cpp-python call llama_chat_apply_template at all?"""
    llm = llama("chat")
    try:
        with fi.inject("llama_chat_apply_template=fail") as armed:
            llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, temperature=0.0)
            hits = armed.hits()["llama_chat_apply_template"]
    finally:
        llm.close()
    return {"hits": hits}


def probe_lora_counted() -> dict[str, Any]:
    """A LoRA adapter made through the interposer is counted while its Llama lives, and freed by close()."""
    import pytest_bitnet as bn

    base = bn.live_counters()["llama_adapters"]
    with fi.inject("llama_adapter_lora_init=off;llama_adapter_lora_free=off") as armed:
        llm = Llama(model_path=MODELS["tiny"], lora_path=MODELS["lora"], n_ctx=64, n_threads=1, verbose=False)
        alive = bn.live_counters()["llama_adapters"] - base
        text = complete(llm)
        llm.close()
        hits = armed.hits()
    return {"alive": alive, "after_close": bn.live_counters()["llama_adapters"] - base, "hits": hits, "text": text}


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "lora_counted": probe_lora_counted,
    "tokenize_fail": probe_tokenize_fail,
    "chat_template": probe_chat_template,
}


def main() -> None:
    wanted = sys.argv[2:] or [*SWEEPS, *PROBES]
    # forked sweeps first: ggml's worker threads, started by the first
    # decode, do not survive a fork (a forked child that decodes after them
    # waits for ever)
    wanted.sort(key=lambda n: not (n in SWEEPS and SWEEPS[n][3]))
    out: dict[str, Any] = {}
    for name in wanted:
        print(f"sweep_driver: {name}", file=sys.stderr, flush=True)  # which scenario a timeout stopped in
        out[name] = run_sweep(*SWEEPS[name]) if name in SWEEPS else PROBES[name]()
    SHARED.close()
    out["_library"] = llama_cpp.llama_cpp._lib._name  # type: ignore[attr-defined]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
