/* loader.c — library discovery and symbol resolution.  See loader.h. */
/* the loader's points sit at the boundary: a guest library's copy of this
 * file must not fire them a second time (bn_fault.h) */
#define BN_FAULT_BOUNDARY 1
#define _GNU_SOURCE
#include "loader.h"

#include <dlfcn.h>
#include <link.h>
#include <stdarg.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "bn_lock.h"
#include "bn_log.h"
#include "host.h"

#define LIB_NAME "libbitnet.so"

const bn_symbol_info bn_socket_symbols[BN_SYM__N] = {
#define BITNET_SYMBOL(NAME, SOCKET, NEED)                                     \
    [BN_SYM_##NAME] = {#NAME, BITNET_SYMBOL_##NEED, BN_FP_DLSYM_##NAME},
#include "bitnet_symbols.def"
#undef BITNET_SYMBOL
};

/* Library objects.  A *cached* library is one per library loaded (one
 * dlopen handle): found again by the path it was asked for, or by its
 * handle when another path names the same file; it lives until exit with
 * the library itself (loader.h), so there are as many as distinct library
 * files loaded.  A *view* is what a load gets when an armed
 * dlsym.<symbol> fault removes a symbol: a copy of the cached library
 * without it, from the counted allocator, owned by the context or call
 * that loaded it and freed by bn_backend_release.  A view is never
 * cached, so a later load with nothing armed gets the whole library, and
 * a fault armed for thousands of loads costs nothing once they end. */
struct bn_library {
    char key[PATH_MAX];  /* the path asked for, resolved: the cache key */
    char path[PATH_MAX]; /* the path mapped (the loader's own answer) */
    char name[PATH_MAX + 8]; /* "dlopen:<path>", the backend's name */
    void *handle;
    void *syms[BN_SYM__N]; /* indexed by bn_symbol; NULL: missing */
    int32_t abi;
    char version[128];
    /* why the caller's deadlines stop at its boundary ("" when its
     * bitnet_host_attach took the host's table): written once, when it is
     * cached (attach_host), read through be.unbounded */
    char unbounded[PATH_MAX + 1100];
    bn_backend be;
    const bn_library *base; /* a view: the cached library it narrows */
    bn_library *next;       /* the cache list */
};

/* What a load found, before a view is made (outside the loader's lock:
 * an allocation may be slowed by a fault and must not hold it). */
typedef struct {
    bn_library *lib;                 /* cached */
    unsigned char removed[BN_SYM__N]; /* by a dlsym.<symbol> fault */
    int any_removed;
} loaded;

static struct {
    pthread_mutex_t lock;
    bn_library *head; /* cached libraries */
    int32_t n_cached;
    char bundled[PATH_MAX];
    /* the llama.cpp adapter (see bn_loader_set_llama) */
    char llama_adapter[PATH_MAX];
    char llama_lib[PATH_MAX];
    char llama_unavailable[1024];
} libs = {PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP, NULL, 0, "", "", "", ""};
/* libs.lock is a bridge lock (bn_lock.h): every dlopen create, per-call
 * function and live-counter read waits for it.  So no fault point fires
 * under it (the loader's points are reached before and after the locked
 * part of a load).  It is recursive because a load logs while it holds it
 * and the log sink runs the host's code (a Python logging handler), which
 * may read the live counters on the same thread. */

static atomic_int n_views;

void bn_loader_set_bundled(const char *path)
{
    bn_lock(&libs.lock);
    snprintf(libs.bundled, sizeof libs.bundled, "%s", path ? path : "");
    bn_unlock(&libs.lock);
}

void bn_loader_set_llama(const char *adapter, const char *libllama,
                         const char *unavailable)
{
    bn_lock(&libs.lock);
    snprintf(libs.llama_adapter, sizeof libs.llama_adapter, "%s",
             adapter ? adapter : "");
    snprintf(libs.llama_lib, sizeof libs.llama_lib, "%s",
             libllama ? libllama : "");
    snprintf(libs.llama_unavailable, sizeof libs.llama_unavailable, "%s",
             unavailable ? unavailable : "");
    bn_unlock(&libs.lock);
}

int bn_llama_configured(void)
{
    bn_lock(&libs.lock);
    int yes = libs.llama_adapter[0] != '\0';
    bn_unlock(&libs.lock);
    return yes;
}

static void note(bn_discovery *d, const char *path, const char *fmt, ...)
    BN_PRINTF(3, 4);
static void note(bn_discovery *d, const char *path, const char *fmt, ...)
{
    if (d->n_tried >= BN_MAX_ATTEMPTS)
        return;
    bn_attempt *a = &d->tried[d->n_tried++];
    snprintf(a->path, sizeof a->path, "%s", path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->result, sizeof a->result, fmt, ap);
    va_end(ap);
}

void *bn_library_symbol(const bn_library *lib, bn_symbol sym)
{
    return (unsigned)sym < BN_SYM__N ? lib->syms[sym] : NULL;
}

/* The backend table of a library.  The library's functions take
 * bitnet_context_t* where the table says void*: the same representation
 * on every ABI we build for, so the pointers are stored as they are. */
static void fill_backend(bn_library *lib)
{
    bn_backend *be = &lib->be;
    snprintf(lib->name, sizeof lib->name, "dlopen:%s", lib->path);
    be->name = lib->name;
    be->unbounded = lib->unbounded[0] ? lib->unbounded : NULL;
#define SYM(field, sym) be->field = (__typeof__(be->field))lib->syms[BN_SYM_##sym]
    SYM(init_context, bitnet_cpp_init_context);
    SYM(free_context, bitnet_cpp_free_context);
    SYM(tokenize_with_context, bitnet_cpp_tokenize_with_context);
    SYM(detokenize_with_context, bitnet_cpp_detokenize_with_context);
    SYM(eval_with_context, bitnet_cpp_eval_with_context);
    SYM(eval_gpu, bitnet_cpp_eval_gpu);
    SYM(get_n_past, bitnet_cpp_get_n_past);
    SYM(reset_context, bitnet_cpp_reset_context);
    SYM(get_model_info, bitnet_cpp_get_model_info);
    SYM(get_capabilities, bitnet_cpp_get_capabilities);
    SYM(percall_tokenize, crossval_bitnet_tokenize);
    SYM(percall_eval, crossval_bitnet_eval_with_tokens);
    SYM(get_last_error, bitnet_cpp_get_last_error);
    SYM(session_create, bitnet_cpp_session_create);
    SYM(session_free, bitnet_cpp_session_free);
    SYM(session_tokenize, bitnet_cpp_session_tokenize);
    SYM(session_eval, bitnet_cpp_session_eval);
#undef SYM
}

/* The cached library of dlopen handle h, or of the path asked for.
 * Caller holds libs.lock. */
static bn_library *cached_by_handle(const void *h)
{
    for (bn_library *l = libs.head; l; l = l->next)
        if (l->handle == h)
            return l;
    return NULL;
}

static bn_library *cached_by_key(const char *key)
{
    for (bn_library *l = libs.head; l; l = l->next)
        if (strcmp(l->key, key) == 0)
            return l;
    return NULL;
}

/* "<why>": the library's own last error after a failed call into it. */
static const char *library_error(const bn_library *lib, char *buf, size_t cap)
{
    int32_t (*fn)(char *, int32_t) =
        (int32_t (*)(char *, int32_t))lib->syms[BN_SYM_bitnet_cpp_get_last_error];
    buf[0] = '\0';
    if (fn)
        fn(buf, (int32_t)cap);
    return buf[0] ? buf : "no reason given";
}

/* Lends the bridge's deadlines, logging and fault engine to a library that
 * exports bitnet_host_attach (bitnet_host.h).  Once per library: when it
 * is cached (a handle is cached once).  What came of it for deadlines is
 * the library's lib->unbounded: the loader is the one place that knows
 * whether a call into the library can be stopped at the caller's deadline
 * (bitnet_bridge_deadlines, describe).  A library that attached is taken
 * at its word that it polls the table's deadline_check. */
static void attach_host(bn_library *lib)
{
    lib->unbounded[0] = '\0';
    bitnet_host_attach_fn attach =
        (bitnet_host_attach_fn)dlsym(lib->handle, "bitnet_host_attach");
    if (!attach) {
        snprintf(lib->unbounded, sizeof lib->unbounded,
                 "%s does not export bitnet_host_attach (bitnet_host.h), so "
                 "the caller's deadline and cancellation never reach inside "
                 "its calls",
                 lib->path);
        BN_LOG(BN_LOG_DEBUG, "loader",
               "%s does not export bitnet_host_attach: the caller's "
               "deadlines, bridge logging and fault points stop at its "
               "boundary",
               lib->path);
        return;
    }
    const bitnet_host_t *host = bn_host_table();
    int rc = attach(host);
    char why[1024];
    if (rc == 0)
        BN_LOG(BN_LOG_DEBUG, "loader",
               "attached host services to %s: deadlines, logging%s", lib->path,
               host->fault_eval ? ", fault points" : "");
    else if (rc > 0)
        BN_LOG(BN_LOG_WARN, "loader",
               "%s took deadlines and logging but declined fault points "
               "(they stay inert inside it): %s",
               lib->path, library_error(lib, why, sizeof why));
    else { /* (rc > 0 above took deadlines, declining only faults: bounded) */
        library_error(lib, why, sizeof why);
        snprintf(lib->unbounded, sizeof lib->unbounded,
                 "%s refused the host table of bitnet_host_attach (%s: "
                 "%.900s), so the caller's deadline and cancellation never "
                 "reach inside its calls",
                 lib->path, bn_error_name(rc), why);
        BN_LOG(BN_LOG_WARN, "loader",
               "%s refused the host table (%s): %s; the caller's deadlines, "
               "bridge logging and fault points stop at its boundary",
               lib->path, bn_error_name(rc), why);
    }
}

/* Socket 4 complete in syms (removed[i] set: missing for this load). */
static int has_sessions(void *const *syms, const unsigned char *removed)
{
    static const bn_symbol s4[] = {
        BN_SYM_bitnet_cpp_session_create, BN_SYM_bitnet_cpp_session_free,
        BN_SYM_bitnet_cpp_session_tokenize, BN_SYM_bitnet_cpp_session_eval};
    for (size_t i = 0; i < sizeof s4 / sizeof s4[0]; i++)
        if (!syms[s4[i]] || (removed && removed[s4[i]]))
            return 0;
    return 1;
}

/* Is symbol i one the library may lack?  Socket 1 is required unless the
 * library offers the seed's alternative, the whole of Socket 4
 * (session_tier.c serves contexts through it). */
static int need_waived(int i, void *const *syms, const unsigned char *removed)
{
    return (i == BN_SYM_bitnet_cpp_init_context ||
            i == BN_SYM_bitnet_cpp_free_context) &&
           has_sessions(syms, removed);
}

/* The error for a library lacking required symbol i (in its own build,
 * or removed by a dlsym.<symbol> fault for this load). */
static int required_missing(const char *lib_path, int i, bn_discovery *d,
                            const char *path)
{
    note(d, path, "loaded, but required symbol %s is missing",
         bn_socket_symbols[i].name);
    return bn_error(BITNET_E_SYMBOL_MISSING,
                    "required symbol '%s' not found in '%s' (nor the whole "
                    "of Socket 4, bitnet_cpp_session_*, which could serve "
                    "instead): the library was built without the socket ABI "
                    "or is too old; rebuild BitNet.cpp with bitnet.h (ABI "
                    "version %d) or point BITNET_CPP_LIBDIR at a build that "
                    "exports it (check with: nm -D %s | grep bitnet_cpp_)",
                    bn_socket_symbols[i].name, lib_path, BITNET_ABI_VERSION,
                    lib_path);
}

/* Caches the library of a new dlopen handle h (opened from path, `key`
 * resolved): its symbols resolved, its required symbols and ABI checked,
 * the host attached.  Closes h when it is refused.  Caller holds
 * libs.lock. */
static int cache_library(void *h, const char *path, const char *key,
                         bn_discovery *d, bn_library **out)
{
    /* lives until exit with the library (see struct bn_library): one per
     * library file, outside the counted allocator like the library's own
     * mapping */
    bn_library *lib = calloc(1, sizeof *lib);
    if (!lib) {
        dlclose(h);
        return bn_error(BITNET_E_OOM, "out of memory loading '%s'", path);
    }
    snprintf(lib->key, sizeof lib->key, "%s", key);
    /* the path actually mapped, for a bare name found on the loader path */
    struct link_map *lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name && lm->l_name[0])
        snprintf(lib->path, sizeof lib->path, "%s", lm->l_name);
    else
        snprintf(lib->path, sizeof lib->path, "%s", key);
    lib->handle = h;
    int rc = BITNET_OK;
    for (int i = 0; i < BN_SYM__N; i++)
        lib->syms[i] = dlsym(h, bn_socket_symbols[i].name);
    for (int i = 0; i < BN_SYM__N && !rc; i++)
        if (bn_socket_symbols[i].need == BITNET_SYMBOL_REQUIRED &&
            !lib->syms[i] && !need_waived(i, lib->syms, NULL))
            rc = required_missing(lib->path, i, d, path);
    lib->abi = -1;
    int32_t (*abi_fn)(void) = (int32_t (*)(void))lib->syms[BN_SYM_bitnet_cpp_abi_version];
    if (!rc && abi_fn)
        lib->abi = abi_fn();
    const char *(*ver_fn)(void) = (const char *(*)(void))lib->syms[BN_SYM_bitnet_cpp_version];
    if (!rc && ver_fn) {
        const char *v = ver_fn();
        snprintf(lib->version, sizeof lib->version, "%s", v ? v : "");
    }
    if (!rc && lib->abi != -1 && lib->abi != BITNET_ABI_VERSION) {
        note(d, path, "loaded, but ABI version %d != %d", (int)lib->abi,
             BITNET_ABI_VERSION);
        rc = bn_error(BITNET_E_ABI_MISMATCH,
                      "incompatible library '%s': it reports ABI version "
                      "%d, this bridge expects %d; rebuild the library "
                      "against this bridge's bitnet.h, or load it with a "
                      "bridge of its ABI version",
                      lib->path, (int)lib->abi, BITNET_ABI_VERSION);
    }
    if (rc) {
        dlclose(h);
        free(lib);
        return rc;
    }
    if (lib->abi == -1)
        BN_LOG(BN_LOG_INFO, "loader",
               "%s does not export bitnet_cpp_abi_version; assuming ABI %d",
               lib->path, BITNET_ABI_VERSION);
    attach_host(lib); /* before the first call into it, as promised */
    fill_backend(lib); /* after: it carries what attach_host found */
    lib->next = libs.head;
    libs.head = lib;
    libs.n_cached++;
    note(d, path, "loaded");
    BN_LOG(BN_LOG_INFO, "loader", "loaded %s (ABI %d, %s)", lib->path,
           (int)lib->abi, lib->version[0] ? lib->version : "no version");
    *out = lib;
    return BITNET_OK;
}

/* Is h this bridge itself: its file, a symlink or a hard link to it (the
 * dynamic loader hands back the handle it already has), or a library whose
 * bitnet_cpp_init_context resolves into it?  As a backend, that
 * init_context would run this discovery again, find itself again, and
 * recurse until the stack overflows.  Decided by where the symbol lives,
 * not by its address: a default-visibility function of ours may be
 * interposed, the module that contains it cannot.  *self gets our file. */
static int is_this_bridge(void *h, char *self, size_t cap)
{
    Dl_info mine, theirs;
    void *init = dlsym(h, "bitnet_cpp_init_context");
    if (!init || !dladdr((void *)&is_this_bridge, &mine) ||
        !dladdr(init, &theirs) || mine.dli_fbase != theirs.dli_fbase)
        return 0;
    snprintf(self, cap, "%s", mine.dli_fname ? mine.dli_fname : "?");
    return 1;
}

/* The cached library of path, opened and cached on first use.  Takes
 * libs.lock; reaches no fault point. */
static int open_cached(const char *path, bn_discovery *d, bn_library **out)
{
    char key[PATH_MAX];
    if (!realpath(path, key))
        snprintf(key, sizeof key, "%s", path);
    int rc = BITNET_OK;
    bn_lock(&libs.lock);
    bn_library *lib = cached_by_key(key);
    if (lib) {
        note(d, path, "already loaded");
        goto done;
    }
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        note(d, path, "dlopen failed: %s", why ? why : "unknown error");
        rc = BITNET_E_LIBRARY_NOT_FOUND;
        goto done;
    }
    char self[PATH_MAX];
    if (is_this_bridge(h, self, sizeof self)) {
        note(d, path,
             "is this bridge itself (%s), not a BitNet library: as the "
             "backend it would run this discovery again and find itself, "
             "for ever",
             self);
        dlclose(h); /* drops the reference this dlopen took; we stay loaded */
        rc = BITNET_E_LIBRARY_NOT_FOUND;
        goto done;
    }
    if ((lib = cached_by_handle(h))) {
        /* the same library by another path: one object, and the
         * reference this dlopen took is given back */
        dlclose(h);
        note(d, path, "already loaded");
    } else {
        rc = cache_library(h, path, key, d, &lib);
    }
done:
    bn_unlock(&libs.lock);
    *out = rc ? NULL : lib;
    return rc;
}

/* Loads path: its cached library, after the dlopen and dlsym.<symbol>
 * points of this load (while anything is armed they are reached on every
 * load, cached or not; a symbol a fault removes is recorded in res, and
 * the load gets a view).  The dlsym points are reached only by a
 * session's own library (bn_load_role, loader.h).  Called without
 * libs.lock: a point may delay or hang, and its fire handlers run the
 * host's code. */
static int load_file(const char *path, bn_load_role role, bn_discovery *d,
                     loaded *res)
{
    memset(res, 0, sizeof *res);
    bn_fault_special fs;
    int frc = BN_FAULT_SPECIAL(DLOPEN, &fs);
    if (frc < 0) {
        note(d, path, "dlopen failed: %s", bn_error_message());
        return frc;
    }
    if (frc > 0) { /* missing: as if the file were not there */
        note(d, path, "not found (%s)", bn_fault_note());
        return BITNET_E_LIBRARY_NOT_FOUND;
    }
    bn_library *lib;
    int rc = open_cached(path, d, &lib);
    if (rc)
        return rc;
    res->lib = lib; /* cached: lives until exit, its symbols never change */
    for (int i = 0; role == BN_LOAD_SESSION && i < BN_SYM__N; i++) {
        /* dlsym.<symbol>=missing: the library lacks it, for this load */
        bn_fault_special sfs;
        int src = BN_FAULT_AT(bn_socket_symbols[i].point, &sfs);
        if (src > 0 && lib->syms[i]) {
            res->removed[i] = 1;
            res->any_removed = 1;
        } else if (src < 0) {
            note(d, path, "dlsym(%s) failed: %s", bn_socket_symbols[i].name,
                 bn_error_message());
            return src;
        }
    }
    for (int i = 0; i < BN_SYM__N; i++)
        if ((res->removed[i] || !lib->syms[i]) &&
            bn_socket_symbols[i].need == BITNET_SYMBOL_REQUIRED &&
            !need_waived(i, lib->syms, res->removed))
            return required_missing(lib->path, i, d, path);
    return BITNET_OK;
}

/* The library a load hands out: the cached one, or a view of it without
 * the symbols a fault removed.  Called without libs.lock (a cached
 * library does not change once cached). */
static int hand_out(const loaded *res, bn_library **out)
{
    if (!res->any_removed) {
        *out = res->lib;
        return BITNET_OK;
    }
    bn_library *v = bn_malloc(sizeof *v, "library view");
    if (!v) {
        bn_error_prefix("loading '%s': ", res->lib->path);
        return BITNET_E_OOM;
    }
    *v = *res->lib;
    v->base = res->lib;
    v->next = NULL;
    for (int i = 0; i < BN_SYM__N; i++)
        if (res->removed[i])
            v->syms[i] = NULL;
    /* what the library says of itself, as it would without the symbol */
    if (!v->syms[BN_SYM_bitnet_cpp_abi_version])
        v->abi = -1;
    if (!v->syms[BN_SYM_bitnet_cpp_version])
        v->version[0] = '\0';
    fill_backend(v);
    /* a name handed out must outlive the view (bitnet_bridge_backend_name
     * promises static storage): the cached library's */
    v->be.name = res->lib->name;
    v->be.unbounded = res->lib->be.unbounded;
    atomic_fetch_add(&n_views, 1);
    *out = v;
    return BITNET_OK;
}

/* Every backend a load hands out is a bn_library's; the embedded ones
 * (reference, stub) are not loaded and say so. */
static const bn_library *library_of(const bn_backend *be)
{
    if (!be || be->embedded)
        return NULL;
    return (const bn_library *)((const char *)be - offsetof(bn_library, be));
}

void bn_backend_release(const bn_backend *be)
{
    const bn_library *lib = library_of(be);
    if (!lib || !lib->base)
        return; /* embedded, or cached: lives until exit */
    atomic_fetch_sub(&n_views, 1);
    bn_free((void *)lib);
}

int bn_backend_same_library(const bn_backend *a, const bn_backend *b)
{
    const bn_library *la = library_of(a), *lb = library_of(b);
    if (!la || !lb)
        return a == b;
    return (la->base ? la->base : la) == (lb->base ? lb->base : lb);
}

BITNET_API void bitnet_bridge_library_objects(int32_t *libraries,
                                              int32_t *views)
{
    bn_lock(&libs.lock);
    if (libraries)
        *libraries = libs.n_cached;
    bn_unlock(&libs.lock);
    if (views)
        *views = atomic_load(&n_views);
}

/* Tries dir/libbitnet.so: absent is recorded and skipped. */
static int try_dir(const char *dir, bn_discovery *d, loaded *out)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, LIB_NAME);
    struct stat st;
    if (stat(path, &st) != 0) {
        note(d, path, "not found");
        return BITNET_E_LIBRARY_NOT_FOUND;
    }
    return load_file(path, BN_LOAD_SESSION, d, out);
}

/* The caller named the file (bitnet_bridge_options.library_path): nothing
 * was discovered, so the discovery variables are no advice; the path is. */
static int explicit_not_loaded(const bn_discovery *d, const char *path)
{
    const char *why = d->n_tried ? d->tried[d->n_tried - 1].result : "?";
    return bn_error(BITNET_E_LIBRARY_NOT_FOUND,
                    "the library given as bitnet_bridge_options.library_path "
                    "('%s') could not be loaded:\n  %s: %s\nCheck that "
                    "bitnet_bridge_options.library_path names an existing "
                    "shared library exporting bitnet.h, built for this "
                    "machine%s; or leave it unset to use discovery",
                    path, path, why,
                    /* dlopen searches for a name without a slash */
                    strchr(path, '/')
                        ? ""
                        : " (a name without '/' is looked up on the system "
                          "loader's path, LD_LIBRARY_PATH, not in the "
                          "current directory: give ./name for that)");
}

static int not_found(const bn_discovery *d, const char *explicit_path)
{
    if (explicit_path)
        return explicit_not_loaded(d, explicit_path);
    char list[3000] = "";
    size_t used = 0;
    for (int i = 0; i < d->n_tried && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used,
                                 "\n  %s: %s", d->tried[i].path,
                                 d->tried[i].result);
    return bn_error(BITNET_E_LIBRARY_NOT_FOUND,
                    "BitNet library %s not found or not loadable; searched:%s"
                    "\nSet BITNET_CPP_LIBDIR to the directory holding %s (or "
                    "BITNET_CPP_DIR to a BitNet.cpp checkout with "
                    "build/bin/%s), or add that directory to "
                    "LD_LIBRARY_PATH; or use BITNET_BACKEND=reference for the "
                    "embedded engine",
                    LIB_NAME, list, LIB_NAME, LIB_NAME);
}

int bn_library_open(const char *explicit_path, bn_discovery *d,
                    bn_library **out)
{
    BN_ERROR_WHERE("loader");
    *out = NULL;
    memset(d, 0, sizeof *d);
    loaded res;
    int rc;
    if (explicit_path) {
        rc = load_file(explicit_path, BN_LOAD_SESSION, d, &res);
        goto done;
    }
    const char *libdir = getenv("BITNET_CPP_LIBDIR");
    const char *cppdir = getenv("BITNET_CPP_DIR");
    rc = BITNET_E_LIBRARY_NOT_FOUND;
    if (libdir && *libdir) {
        rc = try_dir(libdir, d, &res);
        if (rc != BITNET_E_LIBRARY_NOT_FOUND)
            goto done;
    }
    if (cppdir && *cppdir) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/build/bin", cppdir);
        rc = try_dir(dir, d, &res);
        if (rc != BITNET_E_LIBRARY_NOT_FOUND)
            goto done;
    }
    rc = load_file(LIB_NAME, BN_LOAD_SESSION, d, &res); /* the system loader's search path */
    if (rc != BITNET_E_LIBRARY_NOT_FOUND)
        goto done;
    /* Explicit configuration is honoured strictly: the bundled library is
     * the last resort only when neither variable names a place. */
    char bundled[PATH_MAX];
    bn_lock(&libs.lock);
    memcpy(bundled, libs.bundled, sizeof bundled);
    bn_unlock(&libs.lock);
    if (!(libdir && *libdir) && !(cppdir && *cppdir) && bundled[0]) {
        rc = load_file(bundled, BN_LOAD_SESSION, d, &res);
        if (rc != BITNET_E_LIBRARY_NOT_FOUND)
            goto done;
    }
done:
    if (rc == BITNET_E_LIBRARY_NOT_FOUND)
        return not_found(d, explicit_path);
    return rc ? rc : hand_out(&res, out);
}

int bn_llama_open(bn_load_role role, bn_discovery *d, bn_library **out)
{
    BN_ERROR_WHERE("loader");
    *out = NULL;
    memset(d, 0, sizeof *d);
    loaded res;
    char adapter[PATH_MAX], llama_lib[PATH_MAX], unavailable[1024];
    bn_lock(&libs.lock);
    memcpy(adapter, libs.llama_adapter, sizeof adapter);
    memcpy(llama_lib, libs.llama_lib, sizeof llama_lib);
    memcpy(unavailable, libs.llama_unavailable, sizeof unavailable);
    bn_unlock(&libs.lock);
    int rc;
    if (!adapter[0])
        return bn_error(BITNET_E_LIBRARY_NOT_FOUND,
                        "the llama.cpp backend is not available: %s",
                        unavailable[0] ? unavailable
                                       : "no llama.cpp adapter was configured "
                                         "(bitnet_bridge_set_llama_library)");
    rc = load_file(adapter, role, d, &res);
    if (rc == BITNET_E_LIBRARY_NOT_FOUND)
        return bn_error(BITNET_E_LIBRARY_NOT_FOUND,
                        "the llama.cpp adapter '%s' (for %s) could not be "
                        "loaded: %s",
                        adapter, llama_lib,
                        d->n_tried ? d->tried[d->n_tried - 1].result : "?");
    if (rc)
        return rc;
    /* served_by and backend_info name llama.cpp, not the adapter: written
     * on the first open, the same text on every later one */
    char name[sizeof res.lib->name];
    snprintf(name, sizeof name, "llama.cpp:%.4000s", llama_lib);
    bn_lock(&libs.lock);
    if (strcmp(res.lib->name, name) != 0)
        memcpy(res.lib->name, name, sizeof name);
    bn_unlock(&libs.lock);
    return hand_out(&res, out);
}

const bn_backend *bn_library_backend(const bn_library *lib) { return &lib->be; }
const char *bn_library_path(const bn_library *lib) { return lib->path; }
int32_t bn_library_abi(const bn_library *lib) { return lib->abi; }
int bn_library_uses_sessions(const bn_library *lib)
{
    return !lib->syms[BN_SYM_bitnet_cpp_init_context] &&
           has_sessions(lib->syms, NULL);
}
const char *bn_library_version(const bn_library *lib) { return lib->version; }

void bn_libraries_add_counters(bitnet_counters_t *out)
{
    bn_lock(&libs.lock);
    for (bn_library *l = libs.head; l; l = l->next) { /* one per handle */
        int (*fn)(bitnet_counters_t *) =
            (int (*)(bitnet_counters_t *))l->syms[BN_SYM_bitnet_cpp_get_counters];
        bitnet_counters_t c;
        if (fn && fn(&c) == BITNET_OK) {
            out->contexts += c.contexts;
            out->sessions += c.sessions;
            out->models += c.models;
            out->bytes += c.bytes;
            out->allocations += c.allocations;
            out->model_loads += c.model_loads;
            out->peak_bytes += c.peak_bytes;
        }
    }
    bn_unlock(&libs.lock);
}
