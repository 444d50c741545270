"""BITNET_INJECT: a spec armed for a whole program, from the environment.

Importing :mod:`fault_inject` calls :func:`arm_from_env`, so any program
that imports it honours the variable; at exit the arm is disarmed and the
entries never hit are reported on stderr.  With BITNET_INTERPOSE=llama too,
interposition is enabled first (:func:`fault_inject.interpose.enable`): the
spec may name the interposed points (``llama_decode``), which exist only
once the interposer is attached.  A harness that arms the same
spec in smaller scopes (the pytest plugin, per test) or itself (``python -m
fault_inject run``) takes it over with :func:`release_env`.
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
import threading
from typing import Final, Mapping

from .arming import ENV_SEED, Armed, arm, parse_seed
from .registry import NOT_COMPILED, InjectionNotCompiled, compiled_in

__all__ = ["ENV_INTERPOSE", "ENV_SEED", "ENV_SPEC", "arm_from_env", "interpose_from_env", "release_env"]

ENV_SPEC: Final = "BITNET_INJECT"
#: What to interpose ("llama"); empty or "none": nothing.
ENV_INTERPOSE: Final = "BITNET_INTERPOSE"

_lock = threading.Lock()
_armed: Armed | None = None  # what BITNET_INJECT armed, until released


def arm_from_env(environ: Mapping[str, str] | None = None) -> Armed | None:
    """Arms BITNET_INJECT (seed: BITNET_INJECT_SEED) if set; None otherwise.

    At exit the arm is disarmed and entries never hit are reported on
    stderr.
    """
    global _armed
    env = os.environ if environ is None else environ
    text = env.get(ENV_SPEC, "").strip()
    if not text:
        return None
    if not compiled_in():
        raise InjectionNotCompiled(f"{ENV_SPEC}={text!r} is set, but {NOT_COMPILED}")
    raw_seed = env.get(ENV_SEED, "").strip()
    seed = parse_seed(raw_seed, ENV_SEED) if raw_seed else secrets.randbelow(2**32)
    interpose_from_env(env)
    with _lock:
        if _armed is not None and _armed.active:
            return _armed
        armed = arm(text, seed=seed, source=ENV_SPEC)
        _armed = armed
    if armed.resolved.probabilistic and not raw_seed:
        print(f"fault_inject: {ENV_SPEC} uses probabilities; seed {armed.seed} (set {ENV_SEED}={armed.seed} to reproduce)", file=sys.stderr)
    atexit.register(_report, armed)
    return armed


def interpose_from_env(environ: Mapping[str, str] | None = None) -> object | None:
    """Enables interposition if BITNET_INTERPOSE names a kind ("llama");
    returns the Interposed, or None when unset.  Imports nothing otherwise."""
    env = os.environ if environ is None else environ
    kind = env.get(ENV_INTERPOSE, "").strip()
    if not kind or kind == "none":
        return None
    from . import interpose

    return interpose.enable(kind)


def release_env() -> bool:
    """Disarms what BITNET_INJECT armed, without the exit report.

    For a harness that arms the same spec itself in smaller scopes.
    Returns whether anything was armed.
    """
    global _armed
    with _lock:
        armed, _armed = _armed, None
    if armed is None:
        return False
    atexit.unregister(_report)
    if armed.active:
        armed.disarm()
    return True


def _report(armed: Armed) -> None:
    report = armed.disarm()
    if report.never_hit:
        print(f"fault_inject: {ENV_SPEC}: {report.never_hit_message()}", file=sys.stderr)
