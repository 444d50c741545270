/* host_min.h — see host_min.c (stop-gap until the `host` branch lands). */
#ifndef BN_HOST_MIN_H
#define BN_HOST_MIN_H

#include "bitnet_host.h"

/* The table handed to every loaded library that exports
 * bitnet_host_attach. */
const bitnet_host_t *bn_host_table(void);

#endif
