/*
 * percall.c — the per-call functions (crossval_*, bitnet_bridge_percall_*):
 * load, work and free in one call, through the same fallback chain as a
 * context.
 *
 * A per-call function is called twice, a size query then a fill, and each
 * call loads the file.  The two passes are tied to one file here (see "one
 * file for both passes"), so a model replaced between them is refused
 * instead of filling a buffer sized for another model.
 */
/* every point here wraps a backend call: in a guest library (the bridge
 * layer compiled into libbitnet) they must stay silent, the loading
 * bridge's copies already counted the call (bn_fault.h) */
#define BN_FAULT_BOUNDARY 1
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"
#include "loader.h"

/* ---- which tier served the thread's last per-call function -------------- */

/* A copy, not a pointer into a library object: it stays valid whatever is
 * loaded or freed later. */
static _Thread_local char served_label[PATH_MAX + 200];

BITNET_API int32_t bitnet_bridge_percall_served_by(char *buf, int32_t buf_len)
{
    size_t n = strlen(served_label);
    if (buf && buf_len > 0)
        snprintf(buf, (size_t)buf_len, "%s", served_label);
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

/* ---- per-call functions: the same chain, one call long ------------------- */

/* The tiers serving a per-call function: the selected backend, and the
 * fallback tier when the selected one lacks the function (has() says) or
 * the fallback is forced.  *serving is the one to call; the caller
 * releases both (bn_backend_release) when the call is over. */
static int percall_backend(const bitnet_bridge_options *opts,
                           int (*has)(const bn_backend *), const char *sym,
                           const bn_backend **selected,
                           const bn_backend **fallback,
                           const bn_backend **serving)
{
    resolved r;
    const bn_backend *be;
    *selected = *fallback = *serving = NULL;
    served_label[0] = '\0';
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = bn_select_backend(&r, &be);
    if (rc)
        return rc;
    *selected = *serving = be;
    if (be == &bn_stub_backend || (!r.force_fallback && has(be))) {
        bn_tier_label(served_label, sizeof served_label, be, NULL);
        return BITNET_OK;
    }
    if (!r.fallback_allowed)
        return bn_error(BITNET_E_NOT_AVAILABLE,
                        "no tier can serve the per-call function: %s lacks "
                        "it and the fallback tier is disabled "
                        "(BITNET_FALLBACK=none)",
                        be->name);
    const bn_backend *fb;
    if ((rc = bn_fallback_backend(&r, be, &fb)))
        return rc;
    char why[128];
    if (r.force_fallback)
        snprintf(why, sizeof why, "BITNET_FORCE_LLAMA_FALLBACK=1");
    else
        snprintf(why, sizeof why, "%s missing", sym);
    BN_LOG(BN_LOG_WARN, "fallback",
           "%s: per-call function %s; served by the fallback tier (%s)",
           be->name, r.force_fallback ? "forced to fallback" : "missing",
           bn_tier_name(fb));
    bn_tier_label(served_label, sizeof served_label, fb, why);
    *fallback = *serving = fb;
    return BITNET_OK;
}

static void percall_release(const bn_backend *selected,
                            const bn_backend *fallback)
{
    bn_backend_release(fallback);
    bn_backend_release(selected);
}

static int has_percall_tok(const bn_backend *be) { return be->percall_tokenize != NULL; }
static int has_percall_eval(const bn_backend *be) { return be->percall_eval != NULL; }

/* ---- one file for both passes --------------------------------------------
 * The query pass measures the output of one file and the fill pass loads
 * the path again: a file replaced in between (os.replace, a model being
 * regenerated) would have the fill write another model's rows x cols into
 * a buffer sized for the first, and report success.  So each pass pins
 * the file it is about to let the backend read (an open descriptor: while
 * it is open the inode cannot be freed, so its number cannot be handed to
 * another file), identifies it (device, inode, size, modification and
 * change times), calls the backend, and checks that the path still names
 * that file: then the backend read it and nothing else.  A successful
 * query leaves the identity in a record of the calling thread (one per
 * function), and a fill of the same path must find the same file, or it
 * refuses before loading anything.
 *
 * It is done here, around the backend call, rather than in the GGUF
 * reader: the bridge cannot see inside a dlopen'd library or llama.cpp,
 * and this way every tier is covered by one mechanism.  What it cannot
 * see is a file rewritten in place to the same size within the file
 * system's timestamp granularity, or the pinned inode itself renamed away
 * and back while the backend read another; writers replace model files by
 * renaming a new file over them, which it always sees. */

typedef struct {
    int known; /* 0: no regular file at the path (the backend says why) */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
} file_id;

typedef struct {
    int fd; /* -1: nothing pinned */
    file_id id;
} file_pin;

typedef struct {
    int valid;
    char path[PATH_MAX];
    file_id id;
} query_record;

enum { OP_TOKENIZE, OP_EVAL, OP__N };
static const char *const op_names[OP__N] = {"tokenize", "evaluate"};
static _Thread_local query_record last_query[OP__N];

static void id_of(const struct stat *st, file_id *id)
{
    memset(id, 0, sizeof *id);
    if (!S_ISREG(st->st_mode))
        return;
    id->known = 1;
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtime = st->st_mtim;
    id->ctime = st->st_ctim;
}

static int same_file(const file_id *a, const file_id *b)
{
    if (!a->known || !b->known)
        return a->known == b->known;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec &&
           a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* "inode 123, 4096 bytes, modified 2024-05-01 12:00:00.123456789 UTC" */
static const char *describe_id(const file_id *id, char *buf, size_t cap)
{
    if (!id->known) {
        snprintf(buf, cap, "no regular file");
        return buf;
    }
    char when[64] = "?";
    struct tm tm;
    time_t t = id->mtime.tv_sec;
    if (gmtime_r(&t, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf, cap, "inode %ju, %jd bytes, modified %s.%09ld UTC",
             (uintmax_t)id->ino, (intmax_t)id->size, when,
             (long)id->mtime.tv_nsec);
    return buf;
}

static void pin(const char *path, file_pin *p)
{
    memset(p, 0, sizeof *p);
    p->fd = -1;
    if (!path)
        return;
    /* O_NONBLOCK: a FIFO must not block here (the backend refuses it) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0)
        return;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return;
    }
    p->fd = fd;
    id_of(&st, &p->id);
}

static void unpin(file_pin *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
}

/* What the path names now. */
static void id_now(const char *path, file_id *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (path && stat(path, &st) == 0)
        id_of(&st, id);
}

/* Before the backend's pass: pins the file; a fill checks it is the one
 * the thread's query of the same path measured (on refusal nothing stays
 * pinned). */
static int pass_begin(int op, const char *path, int fill, file_pin *p)
{
    pin(path, p);
    const query_record *q = &last_query[op];
    if (!fill || !path || !q->valid || strcmp(q->path, path) != 0)
        return BITNET_OK;
    if (same_file(&q->id, &p->id))
        return BITNET_OK;
    char was[200], now[200];
    int rc = bn_error(BITNET_E_MODEL_LOAD,
                    "'%s': the model file changed between the query pass "
                    "and the fill pass of %s (the query measured %s; the "
                    "path now names %s): the buffer the query sized is for "
                    "the other file, so nothing was loaded or written; "
                    "repeat both passes, query then fill",
                    path, op_names[op], describe_id(&q->id, was, sizeof was),
                    describe_id(&p->id, now, sizeof now));
    unpin(p);
    return rc;
}

/* After the backend's pass returned rc: the path must still name the
 * pinned file, else whatever the pass produced may come from two files
 * (BITNET_E_MODEL_LOAD, whatever rc was but a timeout: a buffer too small
 * or a token out of range are what a changed file causes); a query that
 * succeeded records the file for its fill. */
static int pass_end(int op, const char *path, int fill, file_pin *p, int rc)
{
    query_record *q = &last_query[op];
    file_id after;
    id_now(path, &after);
    /* a deadline or a cancel, not the file, is why such a pass stopped */
    int changed = !same_file(&p->id, &after) && rc != BITNET_E_TIMEOUT;
    unpin(p);
    if (!fill)
        q->valid = 0;
    if (changed) {
        char was[200], now[200];
        return bn_error(BITNET_E_MODEL_LOAD,
                        "'%s': the model file was replaced or modified "
                        "during the %s pass of %s (it was %s; the "
                        "path now names %s): %s; repeat both passes, query "
                        "then fill",
                        path, fill ? "fill" : "query", op_names[op],
                        describe_id(&p->id, was, sizeof was),
                        describe_id(&after, now, sizeof now),
                        fill ? "the buffer's contents are not one model's "
                               "output and must be discarded"
                             : "its size may be another file's");
    }
    if (!fill && rc == BITNET_OK && path && strlen(path) < sizeof q->path) {
        snprintf(q->path, sizeof q->path, "%s", path);
        q->id = p->id;
        q->valid = 1;
    }
    return BITNET_OK;
}

/* ---- the entry points ---------------------------------------------------- */

BITNET_API int bitnet_bridge_percall_tokenize(
    const bitnet_bridge_options *opts, const char *model_path,
    const char *prompt, int add_bos, int parse_special, int32_t *out_tokens,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("tokenize");
    bn_error_clear();
    /* the deadline covers the whole call, loading the library included */
    call_scope scope;
    bn_scope_enter(&scope, NULL, "tokenize");
    const bn_backend *sel, *fb, *be;
    int rc = percall_backend(opts, has_percall_tok, "crossval_bitnet_tokenize",
                             &sel, &fb, &be);
    if (rc) {
        bn_scope_leave(&scope);
        percall_release(sel, fb);
        return bn_done(rc, err, err_len);
    }
    bn_fault_special fs;
    int fill = out_tokens != NULL;
    rc = fill ? BN_FAULT_SPECIAL(TOKENIZE_FILL, &fs) : BN_FAULT(TOKENIZE_QUERY);
    if (rc > 0) { /* grow */
        int32_t n = 0;
        rc = be->percall_tokenize(model_path, prompt, add_bos, parse_special,
                                  NULL, 0, &n, NULL, 0);
        if (!rc)
            rc = bn_grow_tokens_error(n, out_capacity, out_len, &fs);
    }
    file_pin p;
    if (!rc)
        rc = pass_begin(OP_TOKENIZE, model_path, fill, &p);
    if (rc) {
        bn_done(rc, err, err_len);
    } else {
        int brc = be->percall_tokenize(model_path, prompt, add_bos,
                                       parse_special, out_tokens, out_capacity,
                                       out_len, err, err_len);
        /* a changed file explains whatever the pass returned */
        if ((rc = pass_end(OP_TOKENIZE, model_path, fill, &p, brc)))
            bn_done(rc, err, err_len);
        else if ((rc = brc))
            rc = bn_failed(be, rc, err, err_len);
        /* a count the library reports sizes the caller's buffer or says
         * how much of it is a result: checked before anyone uses it */
        else if (out_len &&
                 (rc = bn_check_tokens(be, "crossval_bitnet_tokenize", fill,
                                       *out_len, out_capacity, prompt)))
            bn_done(rc, err, err_len);
    }
    bn_scope_leave(&scope);
    percall_release(sel, fb);
    return rc;
}

BITNET_API int bitnet_bridge_percall_eval(
    const bitnet_bridge_options *opts, const char *model_path,
    const int32_t *tokens, int32_t n_tokens, int32_t n_ctx,
    float *out_logits, int32_t logits_capacity, int32_t *out_rows,
    int32_t *out_cols, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("evaluate");
    bn_error_clear();
    /* the deadline covers the whole call, loading the library included */
    call_scope scope;
    bn_scope_enter(&scope, NULL, "evaluate");
    const bn_backend *sel, *fb, *be;
    int rc = percall_backend(opts, has_percall_eval,
                             "crossval_bitnet_eval_with_tokens", &sel, &fb,
                             &be);
    if (rc) {
        bn_scope_leave(&scope);
        percall_release(sel, fb);
        return bn_done(rc, err, err_len);
    }
    bn_fault_special fs;
    int fill = out_logits != NULL;
    rc = fill ? BN_FAULT_SPECIAL(EVAL_FILL, &fs) : BN_FAULT(EVAL_QUERY);
    if (rc > 0) { /* grow */
        int32_t rows = 0, cols = 0;
        rc = be->percall_eval(model_path, tokens, n_tokens, n_ctx, NULL, 0,
                              &rows, &cols, NULL, 0);
        if (!rc)
            rc = bn_grow_logits_error(rows, cols, logits_capacity, out_rows,
                                      out_cols, &fs);
    }
    file_pin p;
    if (!rc)
        rc = pass_begin(OP_EVAL, model_path, fill, &p);
    if (rc) {
        bn_done(rc, err, err_len);
    } else {
        int brc = be->percall_eval(model_path, tokens, n_tokens, n_ctx,
                                   out_logits, logits_capacity, out_rows,
                                   out_cols, err, err_len);
        if ((rc = pass_end(OP_EVAL, model_path, fill, &p, brc)))
            bn_done(rc, err, err_len);
        else if ((rc = brc))
            rc = bn_failed(be, rc, err, err_len);
        else if (out_rows && out_cols &&
                 (rc = bn_check_logits(be, "crossval_bitnet_eval_with_tokens",
                                       fill, *out_rows, *out_cols, n_tokens,
                                       0, logits_capacity)))
            bn_done(rc, err, err_len);
    }
    bn_scope_leave(&scope);
    percall_release(sel, fb);
    return rc;
}

BITNET_API int crossval_bitnet_tokenize(const char *model_path,
                                        const char *prompt, int add_bos,
                                        int parse_special, int32_t *out_tokens,
                                        int32_t out_capacity, int32_t *out_len,
                                        char *err, int32_t err_len)
{
    return bitnet_bridge_percall_tokenize(NULL, model_path, prompt, add_bos,
                                          parse_special, out_tokens,
                                          out_capacity, out_len, err, err_len);
}

BITNET_API int crossval_bitnet_eval_with_tokens(
    const char *model_path, const int32_t *tokens, int32_t n_tokens,
    int32_t n_ctx, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    return bitnet_bridge_percall_eval(NULL, model_path, tokens, n_tokens,
                                      n_ctx, out_logits, logits_capacity,
                                      out_rows, out_cols, err, err_len);
}
