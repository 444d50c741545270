/*
 * bn_host.h — the guest end's view of bitnet_host.h: the table of the
 * bridge that loaded this library, which native/common's deadlines and
 * logging use instead of the library's own copies.
 *
 * In a library built with BN_GUEST (the standalone libbitnet), the bridge
 * layer's bitnet_host_attach (native/bridge/host.c) stores the table in
 * bn_host_attached; bn_deadline and bn_log then consult bn_host().  In
 * other builds bn_host() is NULL.  The host end (the table a bridge lends)
 * is native/bridge/host.c too, and the fault part of both ends
 * native/fault/lend.c: this layer reads the table, it wires nothing.
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

#ifdef BN_GUEST
/* The attached host: NULL until bitnet_host_attach took one. */
extern _Atomic(const bitnet_host_t *) bn_host_attached BN_HOST_HIDDEN;
#endif

/* The attached host, or NULL (always NULL outside BN_GUEST). */
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
