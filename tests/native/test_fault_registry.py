"""Points registered at run time (bitnet_fault_register_points, and the host
table's register_points): a program linked with native/common and
native/fault registers points the way an interposing library does and arms,
hits and observes them through the same control ABI as points.def's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..native_builds import build_program

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bitnet_fault.h"
#include "bitnet_host.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "lend.h"

#define A(x) (1u << BITNET_FAULT_##x)

static bitnet_host_t host;
static int32_t first;

static int arm(const char *pattern, int action, long long arg, double p,
               uint64_t seed, int flags)
{
    bitnet_fault_term_t t = {p, 0, action, arg};
    char err[512] = "";
    int32_t n = 0;
    int rc = bitnet_fault_arm(pattern, &t, 1, seed, flags, &n, err, sizeof err);
    printf("arm %s %d %d %s\n", pattern, rc, (int)n, err);
    return rc;
}

static void *other_thread(void *arg)
{
    (void)arg;
    bn_fault_special fs;
    host.fault_eval(first, &fs);
    return NULL;
}

static void stats(const char *what, int32_t id)
{
    bitnet_fault_stats_t st;
    bitnet_fault_stats(id, &st);
    printf("stats %s %llu %llu %d %d\n", what, (unsigned long long)st.hits,
           (unsigned long long)st.fired, (int)st.armed, (int)st.thread_scoped);
}

int main(void)
{
    bn_fault_lend(&host);
    int32_t before = bitnet_fault_point_count();
    bitnet_fault_point_t pts[] = {
        {"llama_decode", "llama_decode fails", BITNET_E_INFERENCE,
         A(FAIL) | A(DELAY) | A(HANG)},
        {"llama_tokenize", "llama_tokenize reports a short buffer",
         BITNET_E_INFERENCE, A(FAIL) | A(GROW)},
        {"llama_free", "llama_free (counted)", BITNET_E_INTERNAL, 0},
    };
    int rc = host.register_points(pts, 3, &first);
    printf("register %d %d %d\n", rc, (int)(first - before),
           (int)(bitnet_fault_point_count() - before));
    bitnet_fault_point_t info;
    bitnet_fault_point_info(first + 1, &info);
    printf("info %s|%s|%d|%d\n", info.name, info.description,
           (int)info.default_code, (int)(info.actions == (A(OFF) | A(FAIL) | A(GROW))));
    printf("index %d %d\n", (int)(bitnet_fault_point_index("llama_free") - first),
           (int)bitnet_fault_point_index("llama_nothing"));

    int32_t again = -1;
    rc = bitnet_fault_register_points(pts, 3, &again);
    printf("again %d %d %d\n", rc, (int)(again == first),
           (int)(bitnet_fault_point_count() - before));

    struct { const char *what; bitnet_fault_point_t p[2]; int n; } bad[] = {
        {"static", {{"alloc", "", BITNET_E_OOM, A(FAIL)}}, 1},
        {"partial", {{"llama_decode", "", BITNET_E_INFERENCE, A(FAIL)},
                     {"llama_encode", "", BITNET_E_INFERENCE, A(FAIL)}}, 2},
        {"taken", {{"llama_encode", "", BITNET_E_INFERENCE, A(FAIL)},
                   {"llama_free", "", BITNET_E_INTERNAL, 0}}, 2},
        {"twice", {{"llama_x", "", BITNET_E_INFERENCE, 0},
                   {"llama_x", "", BITNET_E_INFERENCE, 0}}, 2},
        {"pattern", {{"llama_*", "", BITNET_E_INFERENCE, 0}}, 1},
        {"code", {{"llama_y", "", 1, 0}}, 1},
        {"action", {{"llama_y", "", BITNET_E_INFERENCE, 1u << 20}}, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t id = 7;
        bn_error_clear();
        rc = bitnet_fault_register_points(bad[i].p, bad[i].n, &id);
        printf("bad %s %d %d %d %s\n", bad[i].what, rc, (int)id,
               (int)(bitnet_fault_point_count() - before), bn_error_message());
    }

    /* a pattern reaches registered points; all or nothing */
    arm("llama_*", BITNET_FAULT_FAIL, 0, 1.0, 0, 0);
    arm("llama_d*", BITNET_FAULT_FAIL, 0, 1.0, 0, 0);
    bn_fault_special fs;
    bn_error_clear();
    rc = BN_FAULT_AT(first, &fs);
    printf("hit decode %d %s\n", rc, bn_error_message());
    printf("hit tokenize %d\n", BN_FAULT_AT(first + 1, &fs));
    stats("decode", first);
    printf("disarm %d\n", (int)bitnet_fault_disarm_all());
    stats("decode-disarmed", first);

    /* a point-specific action handed back to the site, through the host */
    arm("llama_tokenize", BITNET_FAULT_GROW, 8, 1.0, 0, 0);
    memset(&fs, 0, sizeof fs);
    rc = host.fault_eval(first + 1, &fs);
    printf("grow %d %d %lld %llu\n", rc, fs.action, (long long)fs.arg,
           (unsigned long long)fs.hit);
    bitnet_fault_disarm_all();

    /* thread scoping: another thread's hit is not seen */
    arm("llama_decode", BITNET_FAULT_FAIL, 0, 1.0, 0, BITNET_FAULT_THIS_THREAD);
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    stats("scoped-other", first);
    host.fault_eval(first, &fs);
    stats("scoped-own", first);
    bitnet_fault_disarm_all();

    /* a seed reproduces the firings of a probabilistic term */
    char runs[2][65];
    for (int r = 0; r < 2; r++) {
        arm("llama_decode", BITNET_FAULT_FAIL, 0, 0.5, 42, 0);
        for (int i = 0; i < 64; i++)
            runs[r][i] = BN_FAULT_AT(first, &fs) ? '1' : '0';
        runs[r][64] = '\0';
        bitnet_fault_disarm_all();
    }
    printf("seeded %d %d\n", strcmp(runs[0], runs[1]) == 0,
           (int)(strchr(runs[0], '1') && strchr(runs[0], '0')));

    /* the limit: BITNET_FAULT_MAX_DYNAMIC registered points in all */
    static char names[BITNET_FAULT_MAX_DYNAMIC][32];
    static bitnet_fault_point_t many[BITNET_FAULT_MAX_DYNAMIC];
    int room = BITNET_FAULT_MAX_DYNAMIC - 3;
    for (int i = 0; i <= room; i++) {
        snprintf(names[i], sizeof names[i], "many_%d", i);
        many[i] = (bitnet_fault_point_t){names[i], "", BITNET_E_INTERNAL, 0};
    }
    int32_t id;
    rc = bitnet_fault_register_points(many, room + 1, &id);
    printf("over %d %s\n", rc, bn_error_message());
    rc = bitnet_fault_register_points(many, room, &id);
    printf("full %d %d\n", rc,
           (int)(bitnet_fault_point_count() - before));
    arm("many_*", BITNET_FAULT_OFF, 0, 1.0, 0, 0);
    BN_FAULT_AT(id + room - 1, &fs);
    stats("last", id + room - 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    exe = build_program(tmp_path_factory.mktemp("fault_registry"), PROGRAM, "fault_registry")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        words = line.split(" ")
        key = " ".join(words[:2])
        n = 1
        while key in out:  # the same step again (arming in a loop): key#2, ...
            n += 1
            key = f"{' '.join(words[:2])}#{n}"
        out[key] = words[2:]
    return out


def test_registered_points_get_consecutive_ids_after_points_def(lines: dict[str, list[str]]) -> None:
    assert lines["register 0"][:2] == ["0", "3"]  # ids start at the old count; three more points
    assert lines["info llama_tokenize|llama_tokenize"] == ["reports", "a", "short", "buffer|-4|1"]  # off added
    assert lines["index 2"] == ["-1"]


def test_registering_the_same_names_again_gives_the_same_ids(lines: dict[str, list[str]]) -> None:
    assert lines["again 0"] == ["1", "3"]


def test_bad_registrations_are_refused_whole_and_change_nothing(lines: dict[str, list[str]]) -> None:
    fragments = {
        "static": "the bridge's own point (points.def) has that name",
        "partial": "not followed by the same 2 names as before",
        "taken": "'llama_free': a point registered before has that name",
        "twice": "'llama_x' is listed twice",
        "pattern": "the spec grammar could not name it",
        "code": "default code 1 is not an error code",
        "action": "name unknown actions",
    }
    for what, fragment in fragments.items():
        rc, first_id, grew, *message = lines[f"bad {what}"]
        assert (rc, first_id, grew) == ("-1", "-1", "3"), (what, lines[f"bad {what}"])
        assert fragment in " ".join(message), (what, message)


def test_a_pattern_arms_registered_points_and_refuses_an_action_one_cannot_perform(lines: dict[str, list[str]]) -> None:
    rc, n, *message = lines["arm llama_*"]
    assert (rc, n) == ("-1", "0")
    assert "fault point 'llama_free' does not support 'fail'; it supports: off" in " ".join(message)
    assert lines["arm llama_d*"][:2] == ["0", "1"]
    rc, *message = lines["hit decode"]
    assert rc == "-4"  # the registered default code
    assert "injected fault at 'llama_decode' (fail(-4), hit 1)" in " ".join(message)
    assert lines["hit tokenize"] == ["0"]  # not armed: the pattern took only llama_decode
    assert lines["stats decode"] == ["1", "1", "1", "0"]
    assert lines["disarm 1"] == []
    assert lines["stats decode-disarmed"] == ["1", "1", "0", "0"]  # readable after disarming


def test_point_specific_actions_reach_the_site_through_the_host_table(lines: dict[str, list[str]]) -> None:
    assert lines["grow 1"] == ["7", "8", "1"]  # BITNET_FAULT_GROW, grow(8), hit 1


def test_thread_scoping_and_seeds_work_for_registered_points(lines: dict[str, list[str]]) -> None:
    assert lines["stats scoped-other"] == ["0", "0", "1", "1"]
    assert lines["stats scoped-own"] == ["1", "1", "1", "1"]
    assert lines["seeded 1"] == ["1"]


def test_the_registry_is_bounded(lines: dict[str, list[str]]) -> None:
    assert "the registry's limit, BITNET_FAULT_MAX_DYNAMIC" in " ".join(lines["over -1"])
    assert lines["full 0"] == ["512"]
    assert lines["stats last"] == ["1", "0", "1", "0"]  # the last slot is armed and counted


OTHER_BUILDS = r"""
#include <stdio.h>

#include "bitnet_fault.h"
#include "bn_error.h"
#include "bn_fault.h"

int main(void)
{
    int32_t before = bitnet_fault_point_count(), first = -1;
    bitnet_fault_point_t p = {"llama_decode", "", BITNET_E_INFERENCE,
                              1u << BITNET_FAULT_FAIL};
    int rc = bitnet_fault_register_points(&p, 1, &first);
    printf("register %d %d %d\n", rc, (int)(first - before),
           (int)(bitnet_fault_point_count() - before));
    printf("message %s\n", rc ? bn_error_message() : "");
    bitnet_fault_term_t t = {1.0, 0, BITNET_FAULT_FAIL, 0};
    printf("arm %d\n", bitnet_fault_arm("llama_decode", &t, 1, 0, 0, NULL, NULL, 0));
    bitnet_fault_stats_t st;
    printf("stats %d\n", bitnet_fault_stats(first, &st));
    return 0;
}
"""


def test_a_compiled_out_build_lists_registered_points_and_refuses_to_arm_them(tmp_path: Path) -> None:
    exe = build_program(tmp_path, OTHER_BUILDS, "no_faults", defines=["BN_NO_FAULTS"])
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[0] == "register 0 0 1"  # readable, as points.def's are in such a build
    assert out[2] == "arm -9"  # BITNET_E_UNSUPPORTED: not compiled in
    assert out[3] == "stats 0"


def test_a_guest_library_refuses_to_register_points_of_its_own(tmp_path: Path) -> None:
    exe = build_program(tmp_path, OTHER_BUILDS, "guest", defines=["BN_GUEST"])
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert out[0].startswith("register -9 ") and out[0].endswith(" 0"), out  # refused, nothing registered
    assert "register points with the register_points of the host table" in out[1]


# ---- the control ABI's argument checks, in this process ----------------------------------------
# Every call below is refused before anything is registered, so it can run
# beside the rest of the suite (a registration would last for the process).


def _last_error() -> str:
    from pytest_bitnet.bridge.abi import last_error

    return last_error()


def test_point_info_refuses_a_null_output_and_an_index_out_of_range() -> None:
    from pytest_bitnet.bridge.abi import ffi, lib

    assert lib.bitnet_fault_point_info(0, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert _last_error() == "bitnet_fault_point_info: out is NULL"
    n = lib.bitnet_fault_point_count()
    out = ffi.new("bitnet_fault_point_t *")
    assert lib.bitnet_fault_point_info(n, out) == lib.BITNET_E_INVALID_ARG
    assert _last_error() == f"fault point index {n} is out of range 0..{n - 1}"
    assert lib.bitnet_fault_point_index(ffi.NULL) == -1
    assert lib.bitnet_fault_point_index(b"no.such.point") == -1


def test_registration_refuses_bad_arguments_and_nameless_points() -> None:
    from pytest_bitnet.bridge.abi import ffi, lib

    before = lib.bitnet_fault_point_count()
    pts = ffi.new("bitnet_fault_point_t[1]")
    pts[0].default_code = lib.BITNET_E_INTERNAL
    first = ffi.new("int32_t *", 7)
    cases = [
        ((ffi.NULL, 1, first), "bitnet_fault_register_points: pts is NULL"),
        ((pts, 1, ffi.NULL), "bitnet_fault_register_points: first_id is NULL"),
        ((pts, 0, first), "bitnet_fault_register_points: n is out of range 1..BITNET_FAULT_MAX_DYNAMIC"),
        ((pts, 1, first), "registering fault points: point 0 has a NULL name"),
    ]
    for args, message in cases:
        assert lib.bitnet_fault_register_points(*args) == lib.BITNET_E_INVALID_ARG
        assert _last_error() == message
    empty = ffi.new("char[]", b"")
    pts[0].name = empty
    assert lib.bitnet_fault_register_points(pts, 1, first) == lib.BITNET_E_INVALID_ARG
    assert _last_error() == "registering fault points: point 0 has an empty name"
    assert first[0] == -1  # never a stale id
    assert lib.bitnet_fault_point_count() == before
