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

/* What the calling thread asked for its next calls: a timeout, measured
 * from the start of each call, or one absolute deadline shared by all of
 * them (a caller's operation of several calls -- the two passes of a
 * buffer-filling call -- has one budget, not a fresh one per call). */
static _Thread_local struct {
    int64_t ns;   /* 0: none */
    int absolute; /* ns is a bn_now_ns() time, not a duration */
} call_deadline;

BITNET_API void bitnet_bridge_set_call_timeout(int64_t timeout_ns)
{
    call_deadline.ns = timeout_ns > 0 ? timeout_ns : 0;
    call_deadline.absolute = 0;
}

BITNET_API void bitnet_bridge_set_call_deadline(int64_t deadline_ns)
{
    /* a time at or before the clock's epoch is in the past, not "none" */
    call_deadline.ns = deadline_ns == 0 ? 0 : deadline_ns < 0 ? 1 : deadline_ns;
    call_deadline.absolute = 1;
}

BITNET_API int64_t bitnet_bridge_now_ns(void) { return bn_now_ns(); }

void bn_scope_enter(call_scope *s, atomic_int *cancel, const char *op)
{
    int64_t ns = call_deadline.ns;
    if (ns && !call_deadline.absolute) {
        int64_t now = bn_now_ns();
        /* saturate: a timeout of centuries must not wrap into the past */
        ns = ns > INT64_MAX - now ? INT64_MAX : now + ns;
    }
    s->dl.at_ns = ns;
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
        /* tagged with what failed ([create], [tokenize], [loader], ...) */
        BN_LOG(BN_LOG_ERROR, bn_error_where(), "%s: %s", bn_error_name(rc),
               bn_error_message());
#endif
    }
    return rc;
}
