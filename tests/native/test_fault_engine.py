"""The fault engine's own refusals (native/fault/engine.c), in a program
built from the layers below the bridge and through the bridge's control
ABI: what a wrongly placed point or a bad argument gets instead of being
silently ignored."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pytest_bitnet.bridge.abi import ffi, lib

from ..native_builds import build_program

# missing, nan and grow are performed by the site (BN_FAULT_SPECIAL): a
# point that accepts one but is reached through plain BN_FAULT (a placing
# bug) must say so, not return success as if nothing had been armed.
PLAIN_SITE = r"""
#include <stdio.h>

#include "bn_error.h"
#include "bn_fault.h"

int main(void)
{
    bitnet_fault_term_t t = {1.0, 0, BITNET_FAULT_MISSING, 0};
    if (bitnet_fault_arm("dlopen", &t, 1, 0, 0, NULL, NULL, 0))
        return 2;
    int rc = BN_FAULT(DLOPEN);
    printf("%d %s\n", rc, bn_error_message());
    bn_fault_special fs;
    int src = BN_FAULT_SPECIAL(DLOPEN, &fs);
    printf("special %d %d\n", src, fs.action == BITNET_FAULT_MISSING);
    return 0;
}
"""


def test_a_special_action_at_a_plain_site_is_an_internal_error(tmp_path: Path) -> None:
    exe = build_program(tmp_path, PLAIN_SITE, "plain_site")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    plain, special = proc.stdout.splitlines()
    assert plain == (
        f"{lib.BITNET_E_INTERNAL} injected fault at 'dlopen' (missing, hit 1): this site cannot perform 'missing' "
        "(placed with BN_FAULT, not BN_FAULT_SPECIAL): a bug in the bridge, please report it"
    )
    assert special == "special 1 1"  # the same arming, at a site that performs it


def test_remote_points_must_be_registered_here() -> None:
    # refused before anything changes: an isolation worker of another build
    n = lib.bitnet_fault_point_count()
    pts = ffi.new("int32_t[]", [0, n])
    assert lib.bitnet_fault_set_remote(pts, 2, ffi.NULL, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    from pytest_bitnet.bridge.abi import last_error

    assert last_error() == (
        f"bitnet_fault_set_remote: point index {n} is not registered here ({n} points): both processes must run the same build"
    )
    assert lib.bitnet_fault_set_remote(ffi.NULL, 1, ffi.NULL, ffi.NULL) == lib.BITNET_E_INVALID_ARG
    assert f"point index -1 is not registered here ({n} points)" in last_error()


# The registry and the engine allocate with the system's malloc (the
# counted allocator is itself a fault point, and registered points live
# until exit).  A real shortage, not an injected one: the program lowers
# its address-space limit to what it maps now plus a little, allocates
# until malloc says no, and then arms and registers.
REAL_OOM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bn_error.h"
#include "bn_fault.h"

static long vm_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmSize:", 7))
            kb = atol(line + 7);
    if (f)
        fclose(f);
    return kb * 1024;
}

static void *blocks[1 << 20];
static int n_blocks;

static void exhaust(void)
{
    for (size_t size = 1 << 20; size >= 8; size /= 2)
        while (n_blocks < (1 << 20) && (blocks[n_blocks] = malloc(size)))
            n_blocks++;
}

static void give_back(void)
{
    while (n_blocks)
        free(blocks[--n_blocks]);
}

int main(void)
{
    bitnet_fault_term_t t = {1.0, 0, BITNET_FAULT_FAIL, 0};
    bitnet_fault_point_t p = {"oom_test.point", "registered under a shortage", BITNET_E_INTERNAL, 0};
    int32_t before = bitnet_fault_point_count(), id = 0;
    /* the second shortage: room for the table of points an arming makes
     * first, not for its chain of BITNET_FAULT_MAX_TERMS terms after it
     * (a block past the per-thread cache's sizes, so the allocation of the
     * table finds it) */
    size_t table = (size_t)before * sizeof(void *);
    void *spare = malloc(table + 640 > 1100 ? table + 640 : 1100);
    bitnet_fault_term_t chain[BITNET_FAULT_MAX_TERMS];
    for (int i = 0; i < BITNET_FAULT_MAX_TERMS; i++)
        chain[i] = (bitnet_fault_term_t){1.0, i + 1 < BITNET_FAULT_MAX_TERMS, BITNET_FAULT_OFF, 0};
    printf("start\n"); /* stdout's buffer, before the shortage */
    fflush(stdout);
    struct rlimit lim = {(rlim_t)vm_size() + (8 << 20), RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &lim))
        return 2;
    exhaust();
    int rc = bitnet_fault_arm("alloc", &t, 1, 0, 0, NULL, NULL, 0);
    printf("arm %d %d %s\n", rc, (int)bitnet_fault_armed_list(NULL, 0), bn_error_message());
    rc = bitnet_fault_register_points(&p, 1, &id);
    printf("register %d %d %d %s\n", rc, id, (int)(bitnet_fault_point_count() - before), bn_error_message());
    free(spare);
    rc = bitnet_fault_arm("alloc", chain, BITNET_FAULT_MAX_TERMS, 0, 0, NULL, NULL, 0);
    printf("arm-chain %d %d %s\n", rc, (int)bitnet_fault_armed_list(NULL, 0), bn_error_message());
    give_back();
    rc = bitnet_fault_arm("alloc", &t, 1, 0, 0, NULL, NULL, 0);
    printf("arm-after %d %d\n", rc, (int)bitnet_fault_armed_list(NULL, 0));
    rc = bitnet_fault_register_points(&p, 1, &id);
    printf("register-after %d %d\n", rc, (int)(bitnet_fault_point_count() - before));
    return 0;
}
"""


def test_a_real_shortage_fails_arming_and_registering_whole(tmp_path: Path) -> None:
    exe = build_program(tmp_path, REAL_OOM, "real_oom")
    # the system's malloc: a preloaded one (.ci/sanitize preloads ASan's,
    # which aborts where malloc would return NULL) is not what is tested
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    oom = lib.BITNET_E_OOM
    assert lines[1] == f"arm {oom} 0 arming 'alloc': out of memory"  # nothing armed
    assert lines[2] == f"register {oom} -1 0 registering fault points: out of memory"  # nothing registered
    assert lines[3] == f"arm-chain {oom} 0 arming 'alloc': out of memory"  # the table made is given back
    assert lines[4:] == ["arm-after 0 1", "register-after 0 1"]  # memory back: both work
