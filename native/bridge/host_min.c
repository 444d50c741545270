/*
 * host_min.c — a minimal bitnet_host_t (bitnet_host.h) for the libraries
 * this bridge loads: deadlines and logging, no fault points.
 *
 * Stop-gap for the llama.cpp adapter (branch `llama`): the full table,
 * with the fault registry, is being written on the `host` branch.  Merge
 * note: keep theirs and drop this file; loader.c calls bn_host_table().
 */
#include <stddef.h>

#include "bitnet_host.h"
#include "bn_deadline.h"
#include "bn_error.h"
#include "bn_log.h"
#include "host_min.h"

static void host_log(int level, const char *component, const char *message)
{
    if (level <= bn_log_threshold)
        bn_log_emit(level, component ? component : "library", "%s", message);
}

static int host_log_threshold(void) { return bn_log_threshold; }

static const bitnet_host_t table = {
    .size = (int32_t)sizeof(bitnet_host_t),
    .abi = BITNET_HOST_ABI,
    .deadline_check = bn_deadline_check,
    .deadline_sleep = bn_deadline_sleep,
    .log = host_log,
    .log_threshold = host_log_threshold,
    .last_error = bn_error_message,
    /* fault points: compiled out here (see bitnet_host.h) */
    .fault_registry_hash = 0,
    .fault_armed = NULL,
    .fault_eval = NULL,
    .fault_note = NULL,
};

const bitnet_host_t *bn_host_table(void) { return &table; }
