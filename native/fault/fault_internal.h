/*
 * fault_internal.h — what the files of native/fault share; nothing outside
 * native/fault includes it.
 *
 *   registry.c  the points of points.def (every build)
 *   engine.c    arming, counting, firing (the engine build, BN_FAULT_ENGINE)
 *   guest.c     points forwarded to a host's engine (BN_FAULT_FORWARD)
 *   stubs.c     the control ABI where no engine is built (guest, BN_NO_FAULTS)
 *   lend.c      the fault part of bitnet_host.h, both ends
 */
#ifndef BN_FAULT_INTERNAL_H
#define BN_FAULT_INTERNAL_H

#include "bitnet_host.h"
#include "bn_fault.h"

/* points.def, indexed by bn_fault_point. */
extern const bitnet_fault_point_t bn_fault_registry[BN_FP__N] BN_FAULT_HIDDEN;

/* Every index a point can have: points.def, then the registered ones. */
#define BN_FAULT_CAPACITY (BN_FP__N + BITNET_FAULT_MAX_DYNAMIC)

/* The point at an index (points.def or registered), NULL if none yet. */
const bitnet_fault_point_t *bn_fault_point_def(int point) BN_FAULT_HIDDEN;

/* FNV-1a over the point names in points.def order, joined by '\n': equal
 * hashes mean the same index names the same point, which is what lets a
 * guest hand its point indexes to a host's engine (bitnet_host.h). */
uint64_t bn_fault_registry_hash(void) BN_FAULT_HIDDEN;

/* The error of an armed point reached while the thread holds a bridge lock
 * (bn_lock.h): BITNET_E_INTERNAL naming the point, recorded.  Nothing at
 * such a point is performed, whatever the action: a point does not belong
 * inside a locked region, and refusing loudly (rather than skipping the
 * sleep) makes the first test that arms it fail instead of passing with
 * the delay silently dropped. */
int bn_fault_refuse_locked(int point) BN_FAULT_HIDDEN;

/* Copies a failure's message into the caller's buffer; returns rc. */
int bn_fault_done(int rc, char *err, int32_t err_len) BN_FAULT_HIDDEN;

#ifdef BN_FAULT_FORWARD
/* Sends this library's points to host's engine from now on (lend.c calls
 * it once the registries are known to agree). */
void bn_fault_forward_to(const bitnet_host_t *host) BN_FAULT_HIDDEN;
#endif

#endif
