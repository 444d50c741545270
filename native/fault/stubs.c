/*
 * stubs.c — the control ABI of bitnet_fault.h where no engine is built: a
 * guest library (BN_GUEST: its points are armed in the bridge that loads
 * it) and a compiled-out build (BN_NO_FAULTS: there are no points).  The
 * registry (registry.c) still lists what the code places.
 */
#include "bn_fault.h"

#ifndef BN_FAULT_ENGINE

#include <string.h>

#include "fault_internal.h"

/* A guest reports 0 too, on purpose: compiled_in answers "can this
 * registry be armed?", and a guest's cannot: its points are armed,
 * counted and reported by the engine of the bridge that loads it.  Saying
 * 1 while arm() refuses (or forwarding arm() to a host it may not have)
 * would make two registries look armable; the registry (registry.c)
 * still describes the points the library places. */
int32_t bitnet_fault_compiled_in(void) { return 0; }

static int not_compiled(const char *pattern)
{
#ifdef BN_GUEST
    return bn_error(BITNET_E_UNSUPPORTED,
                    "this library does not arm fault points itself: its "
                    "points forward to the bridge that loads it (dlopen "
                    "mode), so '%s' must be armed there",
                    pattern ? pattern : "(null)");
#else
    return bn_error(BITNET_E_UNSUPPORTED,
                    "fault injection is not compiled in: this bridge was "
                    "built with BN_NO_FAULTS, which removes every fault "
                    "point, so '%s' cannot be armed; rebuild without "
                    "BN_NO_FAULTS",
                    pattern ? pattern : "(null)");
#endif
}

int bitnet_fault_arm(const char *pattern, const bitnet_fault_term_t *terms,
                     int32_t n_terms, uint64_t seed, int32_t flags,
                     int32_t *out_armed, char *err, int32_t err_len)
{
    (void)terms; (void)n_terms; (void)seed; (void)flags;
    if (out_armed)
        *out_armed = 0;
    return bn_fault_done(not_compiled(pattern), err, err_len);
}

int bitnet_fault_disarm(const char *pattern, int32_t *out_disarmed, char *err,
                        int32_t err_len)
{
    if (out_disarmed)
        *out_disarmed = 0;
    return bn_fault_done(not_compiled(pattern), err, err_len);
}

int32_t bitnet_fault_disarm_all(void) { return 0; }

int bitnet_fault_stats(int32_t index, bitnet_fault_stats_t *out)
{
    if (!out || !bn_fault_point_def(index))
        return bn_error(BITNET_E_INVALID_ARG, "bitnet_fault_stats: bad "
                                              "argument");
    memset(out, 0, sizeof *out);
    return BITNET_OK;
}

int32_t bitnet_fault_backtrace(int32_t index, char *buf, int32_t buf_len)
{
    (void)index;
    if (buf && buf_len > 0)
        buf[0] = '\0';
    return 0;
}

void bitnet_fault_set_callback(bitnet_fault_callback_t fn, void *user)
{
    (void)fn; (void)user;
}

/* No engine: nothing is armed here to decide, and no point here can be
 * decided elsewhere (a guest's points are its host's, which can be). */
int32_t bitnet_fault_decide(int32_t point, int32_t locked,
                            bitnet_fault_decision_t *out)
{
    (void)point; (void)locked; (void)out;
    return 0;
}

int32_t bitnet_fault_armed_list(int32_t *out, int32_t cap)
{
    (void)out; (void)cap;
    return 0;
}

int bitnet_fault_set_remote(const int32_t *points, int32_t n,
                            bitnet_fault_decider_t decide, void *user)
{
    (void)points; (void)decide; (void)user;
    return n > 0 ? not_compiled("(remote points)") : BITNET_OK;
}

#ifndef BN_FAULT_FORWARD
/* No points fire here, so no firing to describe (a forwarding guest asks
 * its host, guest.c). */
const char *bn_fault_note(void) { return ""; }
#endif

#endif /* !BN_FAULT_ENGINE */
