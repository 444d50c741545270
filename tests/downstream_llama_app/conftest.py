# The example app's suite leaks on purpose (a Llama parked in a global) and
# arms llama_* points that exist only under --bitnet-interpose=llama: it is
# run by tests/interpose/test_downstream_app.py in its own pytest process,
# never collected by this project's run.
collect_ignore = ["suite"]
