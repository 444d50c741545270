/*
 * host.h — both ends of bitnet_host.h in the bridge layer.
 *
 * Host end: bn_host_table() is the table the loader hands to every library
 * it loads: this module's deadlines, log sink and last error
 * (native/common), and the fault engine's part, filled by native/fault
 * (bn_fault_lend).
 *
 * Guest end (a library built with BN_GUEST, the standalone libbitnet):
 * host.c exports bitnet_host_attach, which checks the table, stores it for
 * native/common (bn_host_attached) and offers its fault part to the points
 * (bn_fault_guest_attach).
 */
#ifndef BN_BRIDGE_HOST_H
#define BN_BRIDGE_HOST_H

#include "bn_host.h"

/* The table, built on first use; lives as long as the process. */
const bitnet_host_t *bn_host_table(void) BN_HOST_HIDDEN;

#endif
