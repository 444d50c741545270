/*
 * registry.c — the fault points of points.def: listed, looked up by name,
 * hashed.  Every build has it (the engine, a guest, BN_NO_FAULTS): a
 * compiled-out build can still say which points its code would have.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bn_fault.h"
#include "bn_lock.h"
#include "fault_internal.h"

const bitnet_fault_point_t bn_fault_registry[] = {
#define BN_FAULT_POINT(id, name, code, actions, desc) {name, desc, code, actions},
#include "points.def"
#undef BN_FAULT_POINT
};
_Static_assert(sizeof bn_fault_registry / sizeof bn_fault_registry[0] == BN_FP__N,
               "registry and point ids disagree");

int32_t bitnet_fault_point_count(void) { return BN_FP__N; }

int bitnet_fault_point_info(int32_t index, bitnet_fault_point_t *out)
{
    if (!out)
        return bn_error(BITNET_E_INVALID_ARG, "bitnet_fault_point_info: out "
                                              "is NULL");
    if (index < 0 || index >= BN_FP__N)
        return bn_error(BITNET_E_INVALID_ARG,
                        "fault point index %d is out of range 0..%d",
                        (int)index, BN_FP__N - 1);
    *out = bn_fault_registry[index];
    return BITNET_OK;
}

int32_t bitnet_fault_point_index(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < BN_FP__N; i++)
        if (strcmp(bn_fault_registry[i].name, name) == 0)
            return i;
    return -1;
}

uint64_t bn_fault_registry_hash(void)
{
    /* FNV-1a; the names alone decide, since index -> name is all a guest
     * and a host must agree on (actions and codes are checked by the
     * engine that arms, against its own registry). */
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < BN_FP__N; i++)
        for (const char *c = bn_fault_registry[i].name;; c++) {
            /* the terminator becomes the '\n' joining this name to the next */
            h = (h ^ (unsigned char)(*c ? *c : '\n')) * 0x100000001b3ull;
            if (!*c)
                break;
        }
    return h;
}

int bn_fault_refuse_locked(int point)
{
    return bn_error(BITNET_E_INTERNAL,
                    "fault point '%s' reached while this thread holds a "
                    "bridge lock: its action is refused (a delay or hang "
                    "there would stall every call waiting for the lock, a "
                    "firing callback would run under it); a point inside a "
                    "locked region is a bug in the bridge, please report it",
                    bn_fault_registry[point].name);
}

#ifdef BN_LOCK_CHECKS
void bn_fault_check_unlocked(int point)
{
    if (BN_LIKELY(!bn_locks_held()))
        return;
    fprintf(stderr,
            "bitnet: fault point '%s' reached while this thread holds a "
            "bridge lock (BN_LOCK_CHECKS): a point inside a locked region "
            "is a bug in the bridge; aborting\n",
            bn_fault_registry[point].name);
    fflush(stderr);
    abort();
}
#endif

int bn_fault_done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK)
        bn_error_copy(err, err_len);
    return rc;
}
