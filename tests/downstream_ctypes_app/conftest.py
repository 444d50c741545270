# The ctypes app's suite leaks on purpose (a model parked in a global) and
# arms llama_* points that exist only once its conftest interposed: it is
# run by tests/interpose/test_ctypes_binding.py in its own pytest process,
# never collected by this project's run.
collect_ignore = ["suite"]
