/*
 * bn_host.h — both ends of bitnet_host.h inside this code base.
 *
 * Host end (the bridge): bn_host_table() is the table the loader hands to
 * every library it loads, filled from this module's own deadlines, log
 * sink, last error and fault engine.
 *
 * Guest end (a library built with BN_GUEST, the standalone libbitnet):
 * bitnet_host_attach stores the table; bn_deadline, bn_log and the fault
 * points then consult bn_host() and use the bridge's services instead of
 * the library's own copies of them.  In other builds bn_host() is NULL.
 */
#ifndef BN_HOST_H
#define BN_HOST_H

#include <stdatomic.h>

#include "bitnet_host.h"
#include "bn_error.h"

#if defined(__GNUC__)
#define BN_HOST_HIDDEN __attribute__((visibility("hidden")))
#else
#define BN_HOST_HIDDEN
#endif

/* Host end: the table, built on first use; lives as long as the process. */
const bitnet_host_t *bn_host_table(void) BN_HOST_HIDDEN;

#ifdef BN_GUEST
extern _Atomic(const bitnet_host_t *) bn_host_attached BN_HOST_HIDDEN;

/* Offers the fault part of the table to the guest's points: 0, or
 * BITNET_HOST_DECLINED_FAULTS with the reason recorded (fault.c). */
int bn_fault_guest_attach(const bitnet_host_t *host) BN_HOST_HIDDEN;
#endif

/* Guest end: the attached host, or NULL (always NULL outside BN_GUEST). */
static inline const bitnet_host_t *bn_host(void)
{
#ifdef BN_GUEST
    return atomic_load_explicit(&bn_host_attached, memory_order_acquire);
#else
    return NULL;
#endif
}

/* After a host service returned rc != 0: copies the host's last error into
 * this module's (the bridge reads the library's), returns rc. */
int bn_host_error(const bitnet_host_t *host, int rc) BN_HOST_HIDDEN;

#endif
