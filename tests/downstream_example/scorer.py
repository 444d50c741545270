"""A tiny downstream library wrapping BitnetSession (the example a plugin user would write).

It has a real leak on one error path: when evaluation fails, the session is
kept "for a retry" that never happens, and never closed.
"""

from __future__ import annotations

import os

import pytest_bitnet as bn

_RETRY: list[bn.BitnetSession] = []  # sessions parked for a retry


class ScoreError(RuntimeError):
    """Scoring failed; the cause is the native error."""


def open_session(model_path: str | os.PathLike[str]) -> bn.BitnetSession:
    return bn.BitnetSession.create(model_path, n_ctx=128)


def score(model_path: str | os.PathLike[str], prompt: str) -> float:
    """The largest next-token logit after prompt."""
    session = open_session(model_path)
    try:
        tokens = session.tokenize(prompt)
    except bn.BitnetError as exc:
        session.close()  # this error path is fine
        raise ScoreError(f"could not tokenize {prompt!r}") from exc
    try:
        logits = session.evaluate(tokens)
    except bn.BitnetError as exc:
        _RETRY.append(session)  # BUG: parked for a retry, never closed
        raise ScoreError(f"could not evaluate {prompt!r}") from exc
    session.close()
    return float(logits[-1].max())
