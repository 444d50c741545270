"""No fault point fires while a bridge lock is held (native/common/bn_lock.h,
native/fault/engine.c; issue 13, item 9).

A delay or hang at a point under the handle registry's lock used to stall
every call of the process: another session's tokenize(timeout=0.1) waited
2.7 s behind an `alloc=delay(3000)` on the registry's growth.  The site is
fixed (the registry grows outside its lock: tests/native/test_handles.py);
these check the mechanism that keeps such a site from coming back, in a
program built from the layers below the bridge.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..native_builds import build_program

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>

#include "bn_alloc.h"
#include "bn_deadline.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "bn_lock.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int arm(const char *point, int action, long long arg)
{
    bitnet_fault_term_t t = {1.0, 0, action, arg};
    bitnet_fault_disarm_all();
    return bitnet_fault_arm(point, &t, 1, 0, 0, NULL, NULL, 0);
}

/* One hit of `alloc` (`tokenize.step` for a hang, which alloc does not
 * take), with or without the lock: "<what> <rc> <ms> <message>". */
static void hit(const char *what, int locked)
{
    if (locked)
        bn_lock(&lock);
    int64_t t0 = bn_now_ns();
    bn_error_clear();
    int rc = what[0] == 'h' ? BN_FAULT(TOKENIZE_STEP) : BN_FAULT(ALLOC);
    long long ms = (long long)((bn_now_ns() - t0) / 1000000);
    if (locked)
        bn_unlock(&lock);
    printf("%s %d %lld %s\n", what, rc, ms, bn_error_message());
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc > 1) { /* disarmed, under a lock: only a BN_LOCK_CHECKS build notices */
        bn_lock(&lock);
        int rc = BN_FAULT(ALLOC);
        bn_unlock(&lock);
        printf("unnoticed %d\n", rc);
        return 0;
    }
    if (arm("alloc", BITNET_FAULT_DELAY, 60000)) /* a minute: the test fails long before */
        return 2;
    hit("delay-locked", 1);
    if (arm("tokenize.step", BITNET_FAULT_HANG, 0))
        return 2;
    hit("hang-locked", 1);
    if (arm("alloc", BITNET_FAULT_FAIL, 0))
        return 2;
    hit("fail-locked", 1);
    bitnet_fault_stats_t st;
    bitnet_fault_stats(BN_FP_ALLOC, &st);
    printf("stats %llu %llu\n", (unsigned long long)st.hits, (unsigned long long)st.fired);
    /* through the allocator, which words the refusal for its caller */
    bn_lock(&lock);
    bn_error_clear();
    void *p = bn_malloc(100, "a test block");
    bn_unlock(&lock);
    printf("malloc-locked %d %d %s\n", p == NULL, bn_error_code(), bn_error_message());
    hit("fail-unlocked", 0);
    if (arm("alloc", BITNET_FAULT_DELAY, 1))
        return 2;
    hit("delay-unlocked", 0);
    return 0;
}
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_program(tmp_path_factory.mktemp("locks"), PROGRAM, "lock_points")


def test_an_armed_point_under_a_bridge_lock_is_refused_not_performed(program: Path) -> None:
    proc = subprocess.run([str(program)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 3)[1:] for line in proc.stdout.splitlines()}
    internal = "-10"  # BITNET_E_INTERNAL
    for what, point in (("delay-locked", "alloc"), ("hang-locked", "tokenize.step"), ("fail-locked", "alloc")):
        rc, ms, message = lines[what]
        assert rc == internal, (what, lines[what])
        assert f"fault point '{point}' reached while this thread holds a bridge lock" in message
        assert "bug in the bridge" in message
        assert int(ms) < 1000  # not slept: the delay asked for a minute, the hang for ever
    assert lines["stats"] == ["1", "0"]  # a locked hit counts as a hit, never as a firing
    # the allocator returns NULL, keeping the engine's words (a bug report,
    # not an injected out-of-memory) behind what it was allocating
    null, code, message = lines["malloc-locked"]
    assert (null, code) == ("1", internal)
    assert message.startswith("allocating 100 bytes for a test block: fault point 'alloc' reached while this thread holds a bridge lock")
    assert lines["fail-unlocked"][0] == "-5"  # without the lock the point fires as armed (alloc's default: OOM)
    assert lines["delay-unlocked"][0] == "0"  # a delay that ran out


def test_a_checking_build_aborts_at_any_point_under_a_bridge_lock(tmp_path: Path) -> None:
    plain = build_program(tmp_path / "plain", PROGRAM, "lock_points")
    assert subprocess.run([str(plain), "x"], capture_output=True, text=True, timeout=30).stdout == "unnoticed 0\n"
    checking = build_program(tmp_path / "checking", PROGRAM, "lock_points", defines=["BN_LOCK_CHECKS"])
    proc = subprocess.run([str(checking), "x"], capture_output=True, text=True, timeout=30)
    assert proc.returncode < 0  # abort()
    assert "fault point 'alloc' reached while this thread holds a bridge lock (BN_LOCK_CHECKS)" in proc.stderr
