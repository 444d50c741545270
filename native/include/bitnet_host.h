/*
 * bitnet_host.h — what a bridge lends the libraries it loads.
 *
 * A backend library runs on the caller's thread, inside a call the bridge
 * has already set a deadline for, armed faults around, and routes logging
 * from.  None of that reaches code in another shared object by itself: the
 * library has its own copies of every static and thread-local.  A library
 * that exports
 *
 *     int bitnet_host_attach(const bitnet_host_t *host);
 *
 * is handed this table once, right after the bridge has loaded it and
 * before any other call.  Through it the library can
 *
 *   - honour the caller's deadline and cancellation (deadline_check /
 *     deadline_sleep read the calling thread's state in the bridge);
 *   - log into the bridge's sink, so its lines reach the caller's logging with
 *     the same format and threshold as the bridge's own;
 *   - place fault points that the bridge's fault registry arms, counts and
 *     reports (when both were built from the same points.def: the registry
 *     hashes must match, else the library must not use fault_eval);
 *   - have a model file checked before handing it to llama.cpp
 *     (check_for_llama).
 *
 * The table stays valid as long as the library stays loaded.  The hook is
 * optional: a library without it (BitNet.cpp, say) is loaded the same way
 * and simply cannot see deadlines, bridge logging or fault points.
 *
 * The return value: 0 = attached; < 0 (a BITNET_E_* code) = the whole
 * table refused; > 0 = attached, but without the services flagged
 * (BITNET_HOST_DECLINED_*): e.g. a library built from another points.def
 * still takes deadlines and logging, and leaves its fault points inert.
 * Unless 0, the library's last error (bitnet_cpp_get_last_error) says why;
 * the bridge logs it and carries on.
 *
 * Not part of the socket ABI (bitnet.h): it is an agreement between this
 * bridge and the libraries built to cooperate with it (the standalone
 * reference library, the llama.cpp adapter).
 */
#ifndef BITNET_HOST_H
#define BITNET_HOST_H

#include <stdatomic.h>
#include <stdint.h>

#include "bitnet.h"
#include "bitnet_fault.h"

/* Overridable only so tests can build a library against "another release"
 * of this table (-DBITNET_HOST_ABI=2): one that refuses the bridge's. */
#ifndef BITNET_HOST_ABI
#define BITNET_HOST_ABI 1
#endif

typedef struct {
    int32_t size; /* sizeof(bitnet_host_t) as the bridge built it */
    int32_t abi;  /* BITNET_HOST_ABI */

    /* Deadlines.  BITNET_OK, or BITNET_E_TIMEOUT with the message in
     * last_error(): the same contract as the bridge's own checks. */
    int (*deadline_check)(void);
    /* Sleeps up to ms (< 0: until the deadline or cancellation). */
    int (*deadline_sleep)(int64_t ms);

    /* Logging.  level: 0 error .. 4 trace; message without the
     * "[time] [LEVEL] [component]" prefix, which the bridge adds.  Lines
     * above log_threshold() are dropped by the bridge anyway; a library
     * checks it first to skip formatting. */
    void (*log)(int level, const char *component, const char *message);
    int (*log_threshold)(void);

    /* The calling thread's last error message recorded in the bridge, for
     * a library to copy into its own when deadline_check, deadline_sleep
     * or fault_eval returned an error. */
    const char *(*last_error)(void);

    /* Fault points: all NULL / 0 when the bridge has faults compiled out.
     * fault_armed: non-zero while any point is armed (the one load a
     * disarmed point costs).  fault_eval(point, special): the bridge's
     * engine for point index `point` of points.def, special is a
     * bn_fault_special * (see native/fault/bn_fault.h).  fault_note(): the
     * calling thread's last firing, "injected fault at ...". */
    uint64_t fault_registry_hash;
    const atomic_int *fault_armed;
    int (*fault_eval)(int point, void *special);
    const char *(*fault_note)(void);

    /* Model admission for llama.cpp (appended: a library checks that size
     * covers it).  check_for_llama(path, vocab_only): BITNET_OK, or an
     * error code with the message in last_error() for a file that llama.cpp
     * would crash or hang on (a GGML_ASSERT, an uncaught exception, a
     * kernel that never returns), checked with the bridge's strict GGUF
     * reader on the calling thread, under the caller's deadline.  A library
     * handing files to llama_model_load_from_file calls it first;
     * vocab_only != 0 for a vocabulary-only load.  NULL: the bridge has no
     * check to lend. */
    int (*check_for_llama)(const char *path, int vocab_only);

    /* Fault points of the library's own (appended: a library checks that
     * size covers it).  bitnet_fault_register_points of bitnet_fault.h, in
     * the bridge's registry: the ids it returns are what the library passes
     * to fault_eval, whatever points.def it was built from (so a library
     * that places only registered points needs no registry hash match).
     * NULL when the bridge has faults compiled out. */
    int32_t (*register_points)(const bitnet_fault_point_t *pts, int32_t n,
                               int32_t *first_id);
} bitnet_host_t;

/* Positive returns of bitnet_host_attach (flags). */
#define BITNET_HOST_DECLINED_FAULTS 1 /* registry hashes differ */

/* Exported by cooperating libraries (never by the bridge itself). */
typedef int (*bitnet_host_attach_fn)(const bitnet_host_t *host);

#endif /* BITNET_HOST_H */
