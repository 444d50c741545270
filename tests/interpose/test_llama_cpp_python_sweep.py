"""The sweep of llama-cpp-python's own error paths through the interposing libllama.

tests/interpose/sweep_driver.py runs every scenario in one child process
(interposed before llama_cpp is imported) and prints the sweep reports; each
test here asserts one row of tests/interpose/FINDINGS.md: either the path is
clean (every failed hit is llama-cpp-python's own error and nothing leaks) or
the harness reports the defect (the leak check names the leaked model, a
body's check names the wrong result, a forked iteration names the signal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_bitnet.testing.malformed import Gguf

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install -e '.[llama]'")
pytest.importorskip("fault_inject.interpose", reason="the interposer is not built in this tree yet")

DRIVER = Path(__file__).with_name("sweep_driver.py")
GGUF_STRING = 8
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class Sweeps:
    """The driver's report of each scenario, run on first use.

    One child process per scenario: a forked sweep must fork before anything
    decoded in that process (ggml's worker threads do not survive a fork, and
    a child that decodes waits for them for ever).
    """

    def __init__(self, models: dict[str, str]) -> None:
        self._models = json.dumps(models)
        self._reports: dict[str, Any] = {}
        self._env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "BITNET_INJECT", "BITNET_INTERPOSE")}

    def __getitem__(self, scenario: str) -> Any:
        if scenario not in self._reports:
            proc = subprocess.run(
                [sys.executable, str(DRIVER), self._models, scenario], capture_output=True, text=True, timeout=300, env=self._env
            )
            assert proc.returncode == 0, f"sweep driver failed on {scenario} ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
            self._reports.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        return self._reports[scenario]


@pytest.fixture(scope="module")
def sweeps(make_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Sweeps:
    tiny = make_model(arch="bitnet", seed=0)
    chat = Gguf.read(tiny).set("tokenizer.chat_template", CHAT_TEMPLATE, vtype=GGUF_STRING)
    lora = write_lora_adapter(tiny, tmp_path_factory.mktemp("lora") / "lora.gguf")
    return Sweeps({"tiny": str(tiny), "chat": str(chat.write(tmp_path_factory.mktemp("chat") / "chat.gguf")),
                   "lora": str(lora)})


def write_lora_adapter(base: Path, out: Path, rank: int = 4) -> Path:
    """A LoRA adapter GGUF for base (llama.cpp's layout: general.type
    "adapter", adapter.type "lora", a lora_a/lora_b pair per adapted weight;
    here the attention queries, small random values)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(base))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    w = gguf.GGUFWriter(str(out), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 8.0)
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        if t.name.endswith("attn_q.weight"):
            n_in, n_out = int(t.shape[0]), int(t.shape[1])  # ne0, ne1
            w.add_tensor(t.name + ".lora_a", (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32))
            w.add_tensor(t.name + ".lora_b", (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def fired(report: dict[str, Any]) -> list[dict[str, Any]]:
    its = [it for it in report["iterations"] if it["fired"]]
    assert its, f"{report['point']} was never hit:\n{report['text']}"
    return its


def assert_clean(report: dict[str, Any], error: str, message: str) -> None:
    """Every failed hit surfaced as llama-cpp-python's own error, nothing leaked."""
    assert report["ok"], report["text"]
    for it in fired(report):
        assert (it["outcome"], it["error"]) == ("error", error), report["text"]
        assert message in it["message"], report["text"]


def test_the_driver_ran_on_the_interposer(sweeps: Sweeps) -> None:
    sweeps["model_load"]
    assert "interpose" in sweeps["_library"], sweeps["_library"]


# ---- clean paths --------------------------------------------------------------------------


def test_model_load_failure_is_clean(sweeps: Sweeps) -> None:
    assert_clean(sweeps["model_load"], "ValueError", "Failed to load model from file")


def test_context_failure_is_clean(sweeps: Sweeps) -> None:
    # the model Llama.__init__ loaded is freed once the half-made Llama is collected
    assert_clean(sweeps["context"], "ValueError", "Failed to create llama_context")


def test_decode_failure_is_clean(sweeps: Sweeps) -> None:
    assert_clean(sweeps["decode"], "RuntimeError", "llama_decode returned -3")
    assert len(fired(sweeps["decode"])) >= 2  # the prompt's decode and a generated token's


def test_tokenize_short_buffer_is_retried(sweeps: Sweeps) -> None:
    report = sweeps["tokenize_grow"]
    assert report["ok"], report["text"]
    assert all(it["outcome"] == "ok" for it in report["iterations"]), report["text"]


def test_state_load_failure_is_clean(sweeps: Sweeps) -> None:
    assert_clean(sweeps["state_load"], "RuntimeError", "Failed to set llama state data")


def test_lora_adapter_is_counted_and_freed(sweeps: Sweeps) -> None:
    # with nothing failing, the adapter made through the interposer is live
    # while its Llama is, and close() frees it
    probe = sweeps["lora_counted"]
    assert probe["alive"] == 1 and probe["after_close"] == 0, probe
    assert probe["hits"] == {"llama_adapter_lora_init": 1, "llama_adapter_lora_free": 1}, probe


def test_chat_templates_never_reach_libllama(sweeps: Sweeps) -> None:
    # llama-cpp-python renders chat templates itself (Jinja2, from the
    # metadata): llama_chat_apply_template is never called, the metadata
    # getters are its path (metadata_* below)
    assert sweeps["chat_template"]["hits"] == 0


# ---- findings (FINDINGS.md) -----------------------------------------------------------------


def test_f4_null_vocab_leaks_the_model(sweeps: Sweeps) -> None:
    # LlamaModel.__init__ raises before it registers the model's free
    report = sweeps["model_vocab"]
    (it,) = fired(report)
    assert (it["outcome"], it["error"]) == ("error", "ValueError") and "Failed to get vocab" in it["message"]
    assert it["leaked"] == {"llama_models": 1}, report["text"]
    assert not report["ok"] and "LEAKED {'llama_models': 1}" in report["text"]


def test_f2_detokenize_reads_a_short_buffer_as_an_empty_piece(sweeps: Sweeps) -> None:
    # each hit is one token's piece: the piece is dropped and detokenize
    # returns without an error (the BOS's piece and the space prefix the BOS
    # rule strips anyway are the only hits whose loss does not show)
    report = sweeps["detokenize_grow"]
    its = fired(report)
    wrong = [it for it in its if it["outcome"] == "unexpected"]
    assert len(wrong) >= len(its) - 2 and all(it["outcome"] in ("ok", "unexpected") for it in its), report["text"]
    assert all(it["error"] == "AssertionError" and "detokenize returned" in it["message"] for it in wrong)
    assert not any(it["leaked"] for it in its)


def test_f1_metadata_reads_a_value_one_byte_short(sweeps: Sweeps) -> None:
    # grow(1): the getter says it needs exactly the buffer's size (snprintf's
    # count without the NUL): metadata() does not retry and keeps 1023 bytes
    report = sweeps["metadata_grow"]
    its = fired(report)
    assert all(it["outcome"] == "unexpected" and "metadata wrong without an error" in it["message"] for it in its), report["text"]


def test_f5_failed_metadata_getter_is_an_empty_value_and_the_chat_format_is_lost(sweeps: Sweeps) -> None:
    # a failed value getter: the key is kept with an empty value
    report = sweeps["metadata_fail"]
    its = fired(report)
    assert all(it["outcome"] == "unexpected" and "is '', not" in it["message"] for it in its), report["text"]
    # a failed key getter: the value is stored under '' and the key is lost;
    # when it is tokenizer.chat_template, the chat format falls back silently
    keys = sweeps["metadata_key_fail"]
    assert all(it["outcome"] == "unexpected" and "'' is " in it["message"] for it in fired(keys)), keys["text"]
    assert any("chat format 'llama-2' instead of 'chat_template.default'" in it["message"] for it in fired(keys)), keys["text"]


def test_f6_a_batch_allocation_failure_surfaces_at_the_first_decode(sweeps: Sweeps) -> None:
    # LlamaBatch checks `batch is None` on a struct returned by value: never
    # true; the NULL arrays are found by ctypes when set_batch writes them
    report = sweeps["batch"]
    (it,) = fired(report)
    assert (it["outcome"], it["error"], it["message"]) == ("error", "ValueError", "NULL pointer access"), report["text"]


@pytest.mark.parametrize("scenario", ["sampler_chain", "sampler_greedy"])
def test_f7_a_null_sampler_crashes_the_process(sweeps: Sweeps, scenario: str) -> None:
    # LlamaSampler never checks what llama_sampler_chain_init /
    # llama_sampler_init_* returned: llama.cpp dereferences the NULL
    report = sweeps[scenario]
    its = fired(report)
    # Under the sanitizer pass (.ci/sanitize preloads ASan into every child)
    # ASan catches the SIGSEGV, reports it and aborts: the crash is SIGABRT.
    expected = {"SIGSEGV", "SIGABRT"} if "libasan" in os.environ.get("LD_PRELOAD", "") else {"SIGSEGV"}
    assert its[0]["outcome"] == "crash" and its[0]["error"] in expected, report["text"]


def test_f10_a_null_lora_adapter_crashes_at_the_first_completion(sweeps: Sweeps) -> None:
    # Llama.__init__ checks `adapter is None`, but the binding's restype is
    # POINTER(c_void_p): a NULL comes back as a falsy pointer object, never
    # None.  The NULL adapter is set on the context and the first decode
    # dereferences it.
    report = sweeps["lora"]
    its = fired(report)
    expected = {"SIGSEGV", "SIGABRT"} if "libasan" in os.environ.get("LD_PRELOAD", "") else {"SIGSEGV"}
    assert its[0]["outcome"] == "crash" and its[0]["error"] in expected, report["text"]


def test_f8_a_failed_state_copy_is_saved_as_an_empty_state(sweeps: Sweeps) -> None:
    report = sweeps["state_save"]
    (it,) = fired(report)
    assert it["outcome"] == "unexpected" and "state of 0 bytes without an error" in it["message"], report["text"]


def test_f9_a_tokenize_failure_is_read_as_a_size(sweeps: Sweeps) -> None:
    # llama_tokenize's documented failure is INT32_MIN; tokenize() takes
    # abs() of it as the size to retry with: an array of 2**31 tokens (8 GiB)
    probe = sweeps["tokenize_fail"]
    assert probe["hits"] >= 1
    assert probe["peak_bytes"] >= 2**31 * 4 or probe["error"] == "MemoryError", probe
