"""An app's own ctypes binding to a libllama loaded by path (as BitNet.cpp's
users write them): no llama-cpp-python at run time but its struct layouts.

Which library it loads is the app's setting, ``MYAPP_LIBLLAMA``; under test,
the suite's conftest.py points it at ``fault_inject.interpose.library_for(real)``.
"""

from __future__ import annotations

import ctypes
import os

from llama_cpp.llama_cpp import llama_model_params  # the struct layout only

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        dll = ctypes.CDLL(os.environ["MYAPP_LIBLLAMA"])
        dll.llama_model_default_params.restype = llama_model_params
        dll.llama_model_load_from_file.argtypes = [ctypes.c_char_p, llama_model_params]
        dll.llama_model_load_from_file.restype = ctypes.c_void_p
        dll.llama_model_free.argtypes = [ctypes.c_void_p]
        dll.llama_model_get_vocab.argtypes = [ctypes.c_void_p]
        dll.llama_model_get_vocab.restype = ctypes.c_void_p
        dll.llama_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                       ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_bool, ctypes.c_bool]
        dll.llama_tokenize.restype = ctypes.c_int32
        _lib = dll
    return _lib


class Model:
    def __init__(self, path: str) -> None:
        params = lib().llama_model_default_params()
        params.use_mmap = False
        self.handle = lib().llama_model_load_from_file(path.encode(), params)
        if not self.handle:
            raise RuntimeError(f"could not load {path}")

    def close(self) -> None:
        if self.handle:
            lib().llama_model_free(self.handle)
            self.handle = None

    def tokenize(self, text: str, capacity: int = 4) -> list[int]:
        vocab = lib().llama_model_get_vocab(self.handle)
        data = text.encode()
        buf = (ctypes.c_int32 * capacity)()
        n = lib().llama_tokenize(vocab, data, len(data), buf, capacity, True, False)
        if n < 0:  # a short buffer: llama.cpp says how many it needs
            capacity = -n
            buf = (ctypes.c_int32 * capacity)()
            n = lib().llama_tokenize(vocab, data, len(data), buf, capacity, True, False)
            if n < 0:
                raise RuntimeError(f"llama_tokenize failed twice ({n})")
        return list(buf[:n])
