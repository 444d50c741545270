"""Child process for tests/native/test_resource_limits.py: creates sessions under a
lowered address-space limit (RLIMIT_AS) and prints what happened as JSON.

    python tests/rlimit_child.py MODEL HEADROOM_BYTES KV_BYTES_PER_POSITION

The limit is the child's current address-space size plus HEADROOM_BYTES,
so it is the same squeeze whatever the interpreter and libraries already
mapped.  Three creates follow: a KV cache larger than the whole limit (the
pre-check must refuse it), one that fits the limit but not the headroom
(the allocation itself must fail, cleanly), then a small session that
must still work.  Exit 0 means no crash; the parent reads the JSON.
"""

from __future__ import annotations

import json
import resource
import sys

import pytest_bitnet as bn


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _try_create(model: str, n_ctx: int) -> dict[str, object]:
    try:
        with bn.BitnetSession.create(model, n_ctx=n_ctx) as s:
            s.evaluate(s.tokenize("hi"))
        return {"n_ctx": n_ctx, "ok": True}
    except bn.BitnetError as exc:
        return {"n_ctx": n_ctx, "ok": False, "class": type(exc).__name__, "message": str(exc)}


def main() -> None:
    model, headroom, kv_per_position = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # One session before the squeeze: the bridge, numpy and the thread
    # pool's first mappings are not what is under test.
    baseline = bn.live_counters()
    print(json.dumps({"warmup": _try_create(model, 16)}), file=sys.stderr)
    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    # whole: the KV cache alone is larger than the limit (refused by the
    # pre-check); headroom: it fits the limit but not the room left under it
    # (the allocation itself fails: keys may succeed, values cannot).
    whole = min(limit // kv_per_position + 1, 2**31 - 1)
    in_limit = (headroom + 64 * 2**20) // kv_per_position
    results = [_try_create(model, whole), _try_create(model, in_limit), _try_create(model, 16)]
    print(json.dumps({"limit": limit, "results": results, "baseline": baseline, "after": bn.live_counters()}))


if __name__ == "__main__":
    main()
