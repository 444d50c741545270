"""The app's suite points its binding at an interposing copy of the real
libllama: the one line a ctypes app adds to get pytest-bitnet's points,
counters and leak check."""

import os

import llama_cpp
from fault_inject import interpose

os.environ["MYAPP_LIBLLAMA"] = str(interpose.library_for(llama_cpp.llama_cpp._lib._name))
