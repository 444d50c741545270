/*
 * calls.c — what every entry point does around a backend call: the
 * calling thread's deadline scope, and the one exit for errors (the
 * caller's buffer, the log, a library's own message).
 */
#include <stdio.h>

#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"

/* ---- the deadline of a call ---------------------------------------------- */

static _Thread_local int64_t call_timeout_ns; /* 0: none */

BITNET_API void bitnet_bridge_set_call_timeout(int64_t timeout_ns)
{
    call_timeout_ns = timeout_ns > 0 ? timeout_ns : 0;
}

void bn_scope_enter(call_scope *s, atomic_int *cancel, const char *op)
{
    int64_t now = bn_now_ns();
    /* saturate: a timeout of centuries must not wrap into the past */
    s->dl.at_ns = !call_timeout_ns ? 0
                  : call_timeout_ns > INT64_MAX - now ? INT64_MAX
                                                      : now + call_timeout_ns;
    s->dl.cancel = cancel;
    s->dl.operation = op;
    s->prev = bn_deadline_enter(&s->dl);
}

void bn_scope_leave(call_scope *s) { bn_deadline_leave(s->prev); }

/* ---- the way out --------------------------------------------------------- */

/* After a backend call failed: make the bridge's last error the backend's
 * whole message (a library keeps its own last error; err may hold only its
 * beginning), then copy it into the caller's buffer. */
int bn_failed(const bn_backend *be, int rc, char *err, int32_t err_len)
{
    if (rc == BITNET_OK)
        return rc;
    if (!be->embedded) {
        char buf[4096] = "";
        if (be->get_last_error)
            be->get_last_error(buf, sizeof buf);
        else if (err && err_len > 0)
            snprintf(buf, sizeof buf, "%s", err);
        bn_error(rc, "%s%s", buf[0] ? buf : "the library reported code ",
                 buf[0] ? "" : bn_error_name(rc));
        bn_error_prefix("%s: ", be->name);
    }
    return bn_done(rc, err, err_len);
}

/* Every error a socket returns leaves through here: copied to the caller's
 * buffer, and logged, so an application that only watches its logs sees
 * native failures too.  A guest library's own bridge layer stays quiet:
 * the bridge that loaded it logs what it returns, once. */
int bn_done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK) {
        bn_error_copy(err, err_len);
#ifndef BN_GUEST
        BN_LOG(BN_LOG_ERROR, "bridge", "%s: %s", bn_error_name(rc), bn_error_message());
#endif
    }
    return rc;
}
