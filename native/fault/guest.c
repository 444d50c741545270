/*
 * guest.c — a guest library's points, forwarded to the engine of the bridge
 * that loaded it.  The forwarding build only (BN_FAULT_FORWARD: BN_GUEST
 * without BN_NO_FAULTS, see bn_fault.h); lend.c decides, at attach, whether
 * the host's engine is taken.
 */
#include "bn_fault.h"

#ifdef BN_FAULT_FORWARD

#include "bn_lock.h"
#include "fault_internal.h"

/* What a point reads before attach (or after a refused one): a zero that
 * never changes, so an unattached library pays what it paid with
 * BN_NO_FAULTS plus one pointer load. */
static const atomic_int never_armed;
_Atomic(const atomic_int *) bn_fault_armed_ref = &never_armed;

/* The host whose engine evaluates this library's points; NULL until an
 * attach with a matching registry. */
static _Atomic(const bitnet_host_t *) fault_host;

int bn_fault_eval(int point, bn_fault_special *special)
{
    const bitnet_host_t *h = atomic_load_explicit(&fault_host,
                                                  memory_order_acquire);
    if (!h)
        return 0;
    /* This library's own bridge locks are invisible to the host's engine
     * (another module's thread-locals): refuse here, as the engine would.
     * The guest cannot ask whether this point is armed for this thread, so
     * it refuses whenever something is armed (the macro checked that). */
    if (bn_locks_held())
        return bn_fault_refuse_locked(point);
    int rc = h->fault_eval(point, special);
    /* the host recorded the firing in its own last error: this library's
     * callers (and the bridge, via bitnet_cpp_get_last_error) read ours */
    if (rc < 0)
        bn_error(rc, "%s", h->last_error());
    return rc;
}

const char *bn_fault_note(void)
{
    const bitnet_host_t *h = atomic_load_explicit(&fault_host,
                                                  memory_order_acquire);
    return h ? h->fault_note() : "";
}

void bn_fault_forward_to(const bitnet_host_t *host)
{
    atomic_store_explicit(&fault_host, host, memory_order_release);
    atomic_store_explicit(&bn_fault_armed_ref, host->fault_armed,
                          memory_order_release);
}

#endif /* BN_FAULT_FORWARD */
