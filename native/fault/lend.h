/*
 * lend.h — the fault part of bitnet_host.h, both ends: what native/bridge's
 * host.c calls so that the bridge never reaches into the fault engine's
 * state itself.
 */
#ifndef BN_FAULT_LEND_H
#define BN_FAULT_LEND_H

#include "bitnet_host.h"
#include "bn_fault.h"

/* Host end: fills the fault fields of a table the bridge lends: this
 * build's engine, or nothing (all NULL / 0: a guest or BN_NO_FAULTS build
 * has no engine to lend). */
void bn_fault_lend(bitnet_host_t *table) BN_FAULT_HIDDEN;

#ifdef BN_GUEST
/* Guest end: offers the host's fault fields to this library's points.  0
 * (taken, or nothing offered), or BITNET_HOST_DECLINED_FAULTS with the
 * reason recorded as the last error (the registries differ). */
int bn_fault_guest_attach(const bitnet_host_t *host) BN_FAULT_HIDDEN;
#endif

#endif
