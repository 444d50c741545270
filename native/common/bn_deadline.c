/* bn_deadline.c — see bn_deadline.h. */
#include "bn_deadline.h"

#include <errno.h>
#include <time.h>

#include "bn_error.h"
#include "bn_host.h"

/* Wake-up period while waiting: bounds how late a timeout or a cancel is
 * noticed during a sleep. */
#define POLL_NS 2000000LL

static _Thread_local const bn_deadline *current;

int64_t bn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

const bn_deadline *bn_deadline_enter(const bn_deadline *d)
{
    const bn_deadline *prev = current;
    current = d;
    return prev;
}

void bn_deadline_leave(const bn_deadline *previous) { current = previous; }

const bn_deadline *bn_deadline_current(void) { return current; }

static int expired(const bn_deadline *d, int64_t now)
{
    if (d->cancel && atomic_load_explicit(d->cancel, memory_order_relaxed))
        return bn_error(BITNET_E_TIMEOUT,
                        "%s was cancelled: another thread called cancel on "
                        "this session",
                        d->operation ? d->operation : "operation");
    if (d->at_ns && now >= d->at_ns)
        return bn_error(BITNET_E_TIMEOUT,
                        "%s timed out: the deadline passed %.1f ms ago; "
                        "raise the timeout (bitnet_bridge_set_call_timeout) "
                        "or give the call less work",
                        d->operation ? d->operation : "operation",
                        (double)(now - d->at_ns) / 1e6);
    return BITNET_OK;
}

static int check_local(void)
{
    const bn_deadline *d = current;
    if (BN_LIKELY(!d))
        return BITNET_OK;
    if (!d->at_ns && !d->cancel)
        return BITNET_OK;
    return expired(d, d->at_ns ? bn_now_ns() : 0);
}

/*
 * In an attached guest library (bn_host.h) the caller's deadline lives in
 * the bridge that called in: its thread-local state is not ours.  So the
 * host's check comes first; the library's own deadline (set by its copy of
 * the bridge layer: no timeout, a cancel flag nobody outside reaches) is
 * still honoured, so a library called directly behaves as before.
 */
int bn_deadline_check(void)
{
    const bitnet_host_t *h = bn_host();
    if (h) {
        int rc = h->deadline_check();
        if (rc)
            return bn_host_error(h, rc);
    }
    return check_local();
}

static int sleep_local(int64_t ms);

/* Attached: the host sleeps, watching the caller's deadline and cancel
 * flag (a hang with neither is refused there, as it would be in-process);
 * the library's own deadline is looked at when the sleep ends. */
int bn_deadline_sleep(int64_t ms)
{
    const bitnet_host_t *h = bn_host();
    if (!h)
        return sleep_local(ms);
    int rc = h->deadline_sleep(ms);
    return rc ? bn_host_error(h, rc) : check_local();
}

static int sleep_local(int64_t ms)
{
    const bn_deadline *d = current;
    if (ms < 0 && (!d || (!d->at_ns && !d->cancel)))
        return bn_error(BITNET_E_INTERNAL,
                        "refusing to hang in %s with no deadline and no "
                        "cancel flag another thread could set: it could "
                        "never end; give the call a timeout "
                        "(bitnet_bridge_set_call_timeout)",
                        d && d->operation ? d->operation : "a call");
    int64_t until = ms < 0 ? INT64_MAX : bn_now_ns() + ms * 1000000LL;
    for (;;) {
        int64_t now = bn_now_ns();
        int rc = d ? expired(d, now) : BITNET_OK;
        if (rc)
            return rc;
        if (now >= until)
            return BITNET_OK;
        int64_t step = until - now;
        if (step > POLL_NS)
            step = POLL_NS;
        if (d && d->at_ns && d->at_ns - now < step)
            step = d->at_ns - now > 0 ? d->at_ns - now : 0;
        struct timespec ts = {step / 1000000000LL, step % 1000000000LL};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
            ;
    }
}
