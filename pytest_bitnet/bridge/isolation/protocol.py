"""The message format between an isolated session and its worker: the one
module both sides import.

Framing.  Every message is an 8-byte header -- the payload's length
(uint32, little endian) and the protocol version (uint32) -- then the
payload: a pickle of ``(kind, body)``.  pickle is acceptable here because
both ends are our own two processes, started by the same interpreter from
the same installation, over private pipes no one else holds: the peer is
trusted, never a network or a file.  A version in every header (not only in
the hello) makes a mismatched worker fail loudly at its first message
instead of misreading one later.

Channels (all private pipes the caller creates and passes with
``pass_fds``):

* requests, caller -> worker: one request at a time, each answered by
  exactly one ``REPLY`` or ``FAILED``, possibly preceded by ``LOG`` and
  ``WARNING`` messages (and ``FAULT_HIT`` asks, each answered by a
  ``FAULT_DECISION`` on the request pipe);
* replies, worker -> caller;
* control, caller -> worker: single bytes read by a thread in the worker
  (``CANCEL``), so a cancel reaches a worker busy in a native call;
* status, a shared page (memfd): the phase the worker's call is in, so a
  caller whose worker died or was stopped can say where it was without the
  worker telling it (it cannot, any more).

Request kinds: ``hello`` is the worker's first message (version, pid);
then ``create``, ``tokenize``, ``detokenize``, ``evaluate``, ``n_past``,
``reset``, ``capabilities``, ``percall`` (a per-call function), ``close``
(frees the session and answers with the worker's live counters),
``stats`` (the live counters now) and ``bye`` (exit).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Final

__all__ = [
    "VERSION", "HEADER", "CANCEL", "HELLO", "CREATE", "TOKENIZE", "DETOKENIZE", "EVALUATE", "N_PAST", "RESET",
    "CAPABILITIES", "PERCALL", "CLOSE", "STATS", "BYE", "REPLY", "FAILED", "LOG", "WARNING", "FAULT_HIT",
    "FAULT_DECISION", "PHASES", "STATUS_SIZE", "ProtocolError", "Reader", "encode", "read_message", "send",
]  # fmt: skip

#: Bumped whenever a message's meaning changes.
VERSION: Final = 1
HEADER: Final = struct.Struct("<II")  # payload length, protocol version

#: The byte the control pipe carries.
CANCEL: Final = b"c"

# request kinds (caller -> worker)
HELLO: Final = "hello"
CREATE: Final = "create"
TOKENIZE: Final = "tokenize"
DETOKENIZE: Final = "detokenize"
EVALUATE: Final = "evaluate"
N_PAST: Final = "n_past"
RESET: Final = "reset"
CAPABILITIES: Final = "capabilities"
PERCALL: Final = "percall"
CLOSE: Final = "close"
STATS: Final = "stats"
BYE: Final = "bye"
FAULT_DECISION: Final = "fault_decision"  # the caller's answer to a FAULT_HIT

# reply kinds (worker -> caller)
REPLY: Final = "reply"  # body: {"value": ..., "backend_info": dict or None}
FAILED: Final = "failed"  # body: an error as fields (see worker.error_fields)
LOG: Final = "log"  # body: (logger name, level, message, component)
WARNING: Final = "warning"  # body: (category name, message)
FAULT_HIT: Final = "fault_hit"  # body: point index: the caller's engine decides it

#: The status page's first byte: the phase of the worker's running call.
PHASES: Final = (None, "QUERY PHASE", "FILL PHASE")
STATUS_SIZE: Final = 4096


class ProtocolError(Exception):
    """A message that does not follow this module (never expected: a bug or a foreign peer)."""


def encode(kind: str, body: Any = None) -> bytes:
    payload = pickle.dumps((kind, body), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload), VERSION) + payload


def send(fd: int, kind: str, body: Any = None) -> None:
    """Writes one whole message (blocking)."""
    data = memoryview(encode(kind, body))
    while data:
        n = os.write(fd, data)
        data = data[n:]


class Reader:
    """Reads messages from one pipe, one read(2) per message when it fits.

    Whatever the pipe holds is taken in one read and kept, so a message
    costs one system call instead of two (header, payload): the per-call
    overhead of an isolated session is mostly system calls.
    """

    __slots__ = ("fd", "buf")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = os.read(self.fd, max(n - len(self.buf), 1 << 16))
            if not chunk:
                return False  # EOF: the peer is gone
            self.buf += chunk
        return True

    def buffered(self) -> bool:
        """A whole message is already here (no need to wait for the pipe)."""
        if len(self.buf) < HEADER.size:
            return False
        length, _ = HEADER.unpack_from(self.buf)
        return len(self.buf) >= HEADER.size + length

    def read(self) -> tuple[str, Any] | None:
        """The next message, or None at EOF.  Blocking."""
        if not self._fill(HEADER.size):
            return None
        length, version = HEADER.unpack_from(self.buf)
        if version != VERSION:
            raise ProtocolError(f"peer speaks isolation protocol version {version}, this side {VERSION}: "
                                "the worker and the caller come from different installations of pytest_bitnet")
        end = HEADER.size + length
        if not self._fill(end):
            return None
        payload = bytes(self.buf[HEADER.size:end])
        del self.buf[:end]
        kind, body = pickle.loads(payload)
        return kind, body


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None  # EOF: the peer is gone
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> tuple[str, Any] | None:
    """The next message, or None at EOF (the peer closed or died).  Blocking."""
    header = _read_exactly(fd, HEADER.size)
    if header is None:
        return None
    length, version = HEADER.unpack(header)
    if version != VERSION:
        raise ProtocolError(f"peer speaks isolation protocol version {version}, this side {VERSION}: "
                            "the worker and the caller come from different installations of pytest_bitnet")
    payload = _read_exactly(fd, length)
    if payload is None:
        return None
    kind, body = pickle.loads(payload)
    return kind, body
