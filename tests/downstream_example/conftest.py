# The example suite leaks on purpose; it is run by tests/plugin/test_downstream.py
# in its own pytest process, not collected by this project's run.
collect_ignore = ["suite"]
