/* bn_host.c — the attached host table of a guest library, as native/common
 * reads it.  See bn_host.h. */
#include "bn_host.h"

#ifdef BN_GUEST
_Atomic(const bitnet_host_t *) bn_host_attached;
#endif

int bn_host_error(const bitnet_host_t *host, int rc)
{
    const char *msg = host->last_error ? host->last_error() : NULL;
    return bn_error(rc, "%s", msg && *msg ? msg : bn_error_name(rc));
}
