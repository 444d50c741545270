"""Process isolation: a session's library in a worker process the bridge owns.

``BitnetSession.create(..., isolation="process")`` (and the per-call
functions' ``isolation=``) serve the calls from a worker started with
``python -m pytest_bitnet.bridge.isolation.worker``: hard deadlines (the
worker is stopped at the deadline), crashes contained (``BackendCrashed``),
the same results and errors as in process, nothing left behind.

Modules: ``protocol`` (the versioned message format, the one module both
sides import), ``worker`` (the worker's main), ``client`` (starting, calling
with a deadline, stopping and reaping a worker), ``session``
(``IsolatedSession``, what ``create`` returns).  Nothing here loads a
worker on import.
"""
