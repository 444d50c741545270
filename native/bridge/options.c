/*
 * options.c — what the bridge is told.  Per call: bitnet_bridge_options
 * resolved against the environment (BITNET_BACKEND, BITNET_FALLBACK,
 * BITNET_FORCE_LLAMA_FALLBACK) and checked, the backend names coming from
 * bitnet_backends.def.  Per process: the log sink and level, the bundled
 * library and the llama.cpp adapter.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"
#include "loader.h"

static const char *const backend_names[BN_BACKEND__N] = {
#define BITNET_BACKEND(ID, NAME, DESCRIPTION) [BN_BACKEND_##ID] = NAME,
#include "bitnet_backends.def"
#undef BITNET_BACKEND
};

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0 &&
           strcasecmp(v, "no") != 0;
}

/* "reference, dlopen, llama, stub": the valid names, for messages. */
static const char *backend_list(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < BN_BACKEND__N && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s",
                                 i ? ", " : "", backend_names[i]);
    return buf;
}

int bn_bridge_resolve(const bitnet_bridge_options *o, resolved *r)
{
#ifdef BN_STANDALONE_LIBRARY
    /* Built as libbitnet: the library serves its own engine.  Backend
     * choice and the fallback chain belong to the bridge that loads it, so
     * the environment that steers that bridge must not steer this too. */
    (void)o;
    r->kind = BN_BACKEND_REFERENCE;
    r->backend = backend_names[r->kind];
    r->library_path = NULL;
    r->force_fallback = 0;
    r->fallback_allowed = 1;
    r->fallback = "reference";
    return BITNET_OK;
#endif
    const char *want = o && o->backend ? o->backend : getenv("BITNET_BACKEND");
    if (!want || !*want)
        want = backend_names[BN_BACKEND_REFERENCE];
    r->library_path = o ? o->library_path : NULL;
    r->force_fallback = o && o->force_fallback >= 0
                            ? o->force_fallback
                            : env_flag("BITNET_FORCE_LLAMA_FALLBACK");
    const char *fb = o && o->fallback ? o->fallback : getenv("BITNET_FALLBACK");
    if (!fb || !*fb)
        fb = "auto";
    if (strcmp(fb, "auto") && strcmp(fb, "llama") && strcmp(fb, "reference") &&
        strcmp(fb, "none"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "unknown fallback '%s' (valid: auto, llama, reference, "
                        "none); check BITNET_FALLBACK",
                        fb);
    r->fallback = fb;
    r->fallback_allowed = strcmp(fb, "none") != 0;
    for (int i = 0; i < BN_BACKEND__N; i++)
        if (strcmp(want, backend_names[i]) == 0) {
            r->kind = (bn_backend_kind)i;
            r->backend = backend_names[i];
            return BITNET_OK;
        }
    char valid[128];
    return bn_error(BITNET_E_INVALID_ARG,
                    "unknown backend '%s' (valid: %s); check the backend "
                    "option (bitnet_bridge_options.backend) or BITNET_BACKEND",
                    want, backend_list(valid, sizeof valid));
}

/* The backend for resolved options (loading a library for dlopen). */
int bn_select_backend(const resolved *r, const bn_backend **out)
{
    bn_discovery d;
    bn_library *lib;
    int rc;
    switch (r->kind) {
    case BN_BACKEND_REFERENCE:
        *out = &bn_reference_backend;
        return BITNET_OK;
    case BN_BACKEND_STUB:
        *out = &bn_stub_backend;
        return BITNET_OK;
    case BN_BACKEND_LLAMA:
        rc = bn_llama_open(BN_LOAD_SESSION, &d, &lib);
        break;
    case BN_BACKEND_DLOPEN:
    default:
        rc = bn_library_open(r->library_path, &d, &lib);
        break;
    }
    if (rc)
        return rc;
    *out = bn_library_backend(lib);
    return BITNET_OK;
}

/* ---- process-wide settings ----------------------------------------------- */

BITNET_API void bitnet_bridge_set_log_sink(void (*sink)(int, const char *,
                                                        const char *))
{
    bn_log_set_sink(sink);
}

BITNET_API void bitnet_bridge_set_log_level(int level)
{
    bn_log_threshold = level < 0 ? -1 : level > 4 ? 4 : level;
}

BITNET_API int bitnet_bridge_get_log_level(void) { return bn_log_threshold; }

BITNET_API int32_t bitnet_bridge_take_log_config_error(char *buf,
                                                       int32_t buf_len)
{
    return bn_log_take_config_error(buf, buf_len);
}

BITNET_API void bitnet_bridge_set_bundled_library(const char *path)
{
    bn_loader_set_bundled(path);
}

BITNET_API void bitnet_bridge_set_llama_library(const char *adapter_path,
                                                const char *libllama_path,
                                                const char *unavailable)
{
    bn_loader_set_llama(adapter_path, libllama_path, unavailable);
}
