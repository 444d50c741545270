/*
 * lend.c — lending the fault engine to a guest library (bitnet_host.h):
 * the host end fills the fault fields of the table the bridge passes it,
 * the guest end decides whether a host's engine can serve this library's
 * points.  Every build has it; what each end does depends on the build.
 */
#include "lend.h"

#include "fault_internal.h"

#ifdef BN_FAULT_ENGINE
static int host_fault_eval(int point, void *special)
{
    return bn_fault_eval(point, (bn_fault_special *)special);
}
#endif

void bn_fault_lend(bitnet_host_t *table)
{
#ifdef BN_FAULT_ENGINE
    /* only an engine can lend faults: a guest or BN_NO_FAULTS build leaves
     * them NULL / 0, which a library reads as "nothing offered" */
    table->fault_registry_hash = bn_fault_registry_hash();
    table->fault_armed = &bn_fault_armed_points;
    table->fault_eval = host_fault_eval;
    table->fault_note = bn_fault_note;
    table->register_points = bitnet_fault_register_points;
#else
    (void)table;
#endif
}

#ifdef BN_GUEST
int bn_fault_guest_attach(const bitnet_host_t *host)
{
#ifdef BN_FAULT_FORWARD
    if (!host->fault_eval || !host->fault_armed || !host->fault_note)
        return 0; /* the bridge has no engine: nothing offered, none taken */
    uint64_t mine = bn_fault_registry_hash();
    if (host->fault_registry_hash != mine) {
        bn_error(BITNET_E_ABI_MISMATCH,
                 "fault registry hash %016llx differs from the bridge's "
                 "%016llx: this library was built from another points.def, "
                 "so its point indexes would name other points; its fault "
                 "points stay inert (rebuild it with this bridge's sources)",
                 (unsigned long long)mine,
                 (unsigned long long)host->fault_registry_hash);
        return BITNET_HOST_DECLINED_FAULTS;
    }
    bn_fault_forward_to(host);
    return 0;
#else /* BN_NO_FAULTS: no points to forward */
    (void)host;
    return 0;
#endif
}
#endif /* BN_GUEST */
