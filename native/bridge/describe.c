/*
 * describe.c — the discovery report (bitnet_bridge_describe): for given
 * options, the mode, every path tried, the library, its ABI and version,
 * and each socket symbol of bitnet_symbols.def with what serves it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "bn_error.h"
#include "bn_never.h"
#include "bridge.h"
#include "loader.h"

/* ---- discovery report ---------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap, len; /* len counts what would have been written */
} report;

static void put(report *r, const char *fmt, ...) BN_PRINTF(2, 3);
static void put(report *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *dst = r->buf && r->len < r->cap ? r->buf + r->len : NULL;
    size_t room = dst ? r->cap - r->len : 0;
    int n = vsnprintf(dst, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->len += (size_t)n;
}

/* An error line: the report is one record per line, so newlines in the
 * message become "; ". */
static void put_error(report *r, const char *msg)
{
    put(r, "error\t");
    for (const char *p = msg; *p; p++) {
        if (*p == '\n') {
            put(r, "; ");
            while (p[1] == ' ')
                p++;
        } else {
            put(r, "%c", *p);
        }
    }
    put(r, "\n");
}

/* Whether deadlines reach inside the library (bn_backend.unbounded). */
static void put_deadlines(report *r, const char *unbounded)
{
    if (unbounded)
        put(r, "deadlines\tnot honoured\t%s\n", unbounded);
    else
        put(r, "deadlines\thonoured\n");
}

/* The fallback tier's name as the report shows it, without loading it. */
static const char *fallback_label(const resolved *r)
{
    if (r->kind == BN_BACKEND_LLAMA) /* never its own fallback */
        return "reference";
    if (!strcmp(r->fallback, "llama") ||
        (!strcmp(r->fallback, "auto") && bn_llama_configured()))
        return "llama.cpp";
    return "reference";
}

static int is_session_symbol(bn_symbol sym)
{
    return sym == BN_SYM_bitnet_cpp_session_create ||
           sym == BN_SYM_bitnet_cpp_session_free ||
           sym == BN_SYM_bitnet_cpp_session_tokenize ||
           sym == BN_SYM_bitnet_cpp_session_eval;
}

/* What serves a socket symbol of a library: itself, or the fallback; and
 * for Socket 4, which of the two alternatives the bridge calls
 * (session_tier.c): a symbol found but never called says "not used". */
static const char *serves(bn_symbol sym, int found, const resolved *r,
                          const bn_library *lib)
{
    static _Thread_local char forced[64], plain[64];
    snprintf(forced, sizeof forced, "fallback:%s (forced)", fallback_label(r));
    snprintf(plain, sizeof plain, "fallback:%s", fallback_label(r));
    int need = bn_socket_symbols[sym].need;
    int sessions = lib && bn_library_uses_sessions(lib);
    if (is_session_symbol(sym) && found && !sessions)
        return "not used (Socket 1 serves contexts)";
    if (sessions && !found) {
        if (sym == BN_SYM_bitnet_cpp_init_context)
            return "library (Socket 4: bitnet_cpp_session_create)";
        if (sym == BN_SYM_bitnet_cpp_free_context)
            return "library (Socket 4: bitnet_cpp_session_free)";
        if (sym == BN_SYM_bitnet_cpp_tokenize_with_context && !r->force_fallback)
            return "library (Socket 4: bitnet_cpp_session_tokenize)";
        if (sym == BN_SYM_bitnet_cpp_eval_with_context && !r->force_fallback)
            return "library (Socket 4: bitnet_cpp_session_eval, sequence 0 only)";
    }
    if (need == BITNET_SYMBOL_FALLBACK && r->force_fallback)
        return r->fallback_allowed ? forced : "none";
    if (found)
        return "library";
    if (sym == BN_SYM_bitnet_cpp_get_counters)
        return "bridge counters only";
    if (need == BITNET_SYMBOL_FALLBACK)
        return r->fallback_allowed ? plain : "none";
    return need == BITNET_SYMBOL_REQUIRED ? "none (required)" : "not used";
}

BITNET_API int32_t bitnet_bridge_describe(const bitnet_bridge_options *opts,
                                          char *buf, int32_t buf_len)
{
    report rep = {buf, buf && buf_len > 0 ? (size_t)buf_len : 0, 0};
    resolved r;
    int rc = bn_bridge_resolve(opts, &r);
    if (rc) {
        put_error(&rep, bn_error_message());
    } else {
        put(&rep, "mode\t%s\n", r.backend);
        put(&rep, "fallback\t%s\n", r.fallback_allowed ? fallback_label(&r) : "none");
        put(&rep, "force_fallback\t%d\n", r.force_fallback);
        if (r.kind == BN_BACKEND_DLOPEN || r.kind == BN_BACKEND_LLAMA) {
            bn_discovery d;
            bn_library *lib = NULL;
            rc = r.kind == BN_BACKEND_LLAMA
                     ? bn_llama_open(BN_LOAD_SESSION, &d, &lib)
                     : bn_library_open(r.library_path, &d, &lib);
            for (int i = 0; i < d.n_tried; i++)
                put(&rep, "tried\t%s\t%s\n", d.tried[i].path, d.tried[i].result);
            if (rc)
                put_error(&rep, bn_error_message());
            if (lib) {
                put(&rep, "library\t%s\n", bn_library_path(lib));
                put(&rep, "abi\t%d\t%d\n", (int)bn_library_abi(lib), BITNET_ABI_VERSION);
                put(&rep, "version\t%s\n", bn_library_version(lib));
                put_deadlines(&rep, bn_library_backend(lib)->unbounded);
            }
            for (int i = 0; i < BN_SYM__N; i++) {
                const bn_symbol_info *s = &bn_socket_symbols[i];
                int found = lib && bn_library_symbol(lib, (bn_symbol)i);
                put(&rep, "symbol\t%s\t%s\t%s\t%s\n", s->name,
                    s->need == BITNET_SYMBOL_REQUIRED ? "required"
                                                      : "optional",
                    lib ? (found ? "found" : "missing") : "unknown",
                    serves((bn_symbol)i, found, &r, lib));
            }
            if (lib)
                bn_backend_release(bn_library_backend(lib));
        } else {
            put(&rep, "library\t(embedded %s)\n", r.backend);
            put(&rep, "abi\t%d\t%d\n", BITNET_ABI_VERSION, BITNET_ABI_VERSION);
            put(&rep, "version\t%s\n", bitnet_cpp_version());
            put_deadlines(&rep, NULL); /* embedded: the bridge's own step points */
            if (r.kind == BN_BACKEND_STUB)
                put(&rep, "error\tSTUB mode: no backend serves any call\n");
        }
    }
    if (NEVER(rep.len > INT32_MAX - 1, "a report is a bounded number of lines of bounded fields (paths < PATH_MAX, messages < BN_ERROR_CAP, one line per socket symbol): some kilobytes"))
        return BITNET_E_INTERNAL;
    return (int32_t)rep.len; /* without the NUL: query with buf NULL */
}
