/*
 * bitnet_bridge.h — what the bridge offers beyond the socket ABI: facts
 * about the backend behind a handle.  Only the bridge implements these; a
 * backend library does not export them.
 */
#ifndef BITNET_BRIDGE_H
#define BITNET_BRIDGE_H

#include "bitnet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Name of the backend serving ctx ("reference", ...), static storage;
 * NULL for an invalid handle. */
BITNET_API const char *bitnet_bridge_backend_name(const bitnet_context_t *ctx);

#ifdef __cplusplus
}
#endif
#endif
