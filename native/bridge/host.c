/* host.c — the table a bridge lends (host end) and its attachment in a
 * library (guest end).  See host.h and bitnet_host.h. */
#include "host.h"

#include <pthread.h>

#include "bn_deadline.h"
#include "bitnet_bridge.h"
#include "bn_log.h"
#include "lend.h"
#include "llama_check.h"

/* ---- host end ------------------------------------------------------------ */

static void host_log(int level, const char *component, const char *message)
{
    /* the contract lets a library skip the threshold check: drop here */
    if (level <= bn_log_threshold)
        bn_log_write(level, component ? component : "?", message ? message : "");
}

static int host_log_threshold(void) { return bn_log_threshold; }

static bitnet_host_t table;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void fill_table(void)
{
    table.size = (int32_t)sizeof table;
    table.abi = BITNET_HOST_ABI;
    table.deadline_check = bn_deadline_check;
    table.deadline_sleep = bn_deadline_sleep;
    table.log = host_log;
    table.log_threshold = host_log_threshold;
    table.last_error = bn_error_message;
    table.check_for_llama = bn_check_for_llama;
    bn_fault_lend(&table); /* the fault part, if this build has an engine */
}

const bitnet_host_t *bn_host_table(void)
{
    pthread_once(&table_once, fill_table);
    return &table;
}

#ifndef BN_GUEST /* a guest lends nothing: it is lent to */
BITNET_API const void *bitnet_bridge_host_table(void)
{
    return bn_host_table();
}
#endif

/* ---- guest end ----------------------------------------------------------- */

#ifdef BN_GUEST

static int usable(const bitnet_host_t *host)
{
    if (!host)
        return bn_error(BITNET_E_INVALID_ARG, "bitnet_host_attach: host is "
                                              "NULL");
    if (host->abi != BITNET_HOST_ABI || host->size < (int32_t)sizeof *host)
        return bn_error(BITNET_E_ABI_MISMATCH,
                        "host table ABI %d (%d bytes) is not the %d (%d "
                        "bytes) this library was built for: rebuild it with "
                        "the bridge's bitnet_host.h",
                        (int)host->abi, (int)host->size, BITNET_HOST_ABI,
                        (int)sizeof *host);
    if (!host->deadline_check || !host->deadline_sleep || !host->log ||
        !host->log_threshold || !host->last_error)
        return bn_error(BITNET_E_INVALID_ARG,
                        "host table lacks a required function (deadlines, "
                        "logging and last_error are mandatory)");
    return BITNET_OK;
}

/* Exported (the one symbol of bitnet_host.h a library provides): the
 * visibility attribute overrides -fvisibility=hidden. */
BITNET_API int bitnet_host_attach(const bitnet_host_t *host);

BITNET_API int bitnet_host_attach(const bitnet_host_t *host)
{
    bn_error_clear();
    int rc = usable(host);
    if (rc)
        return rc;
    const bitnet_host_t *expected = NULL;
    if (!atomic_compare_exchange_strong(&bn_host_attached, &expected, host) &&
        expected != host) /* the same bridge again answers as before */
        return bn_error(BITNET_E_INVALID_ARG,
                        "this library is already attached to another bridge "
                        "in this process; a library serves one");
    /* deadlines and logging are live from here; faults may be declined */
    return bn_fault_guest_attach(host);
}

#endif /* BN_GUEST */
