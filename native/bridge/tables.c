/*
 * tables.c — the .def tables of native/include, enumerated for callers
 * (bitnet_bridge_error_info, _symbol_info, _backend_info in
 * bitnet_bridge.h): a binding reads the facts from the library instead of
 * writing them again.  Every string is static.
 */
#include "bitnet_bridge.h"
#include "bn_error.h"
#include "bn_fault.h"

static const bitnet_error_info_t errors[] = {
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE)                           \
    {CODE, #ID, CLASS_NAME, MESSAGE},
#include "bitnet_errors.def"
#undef BITNET_ERROR
};

static const bitnet_symbol_info_t symbols[] = {
#define BITNET_SYMBOL(NAME, SOCKET, NEED)                                     \
    {#NAME, SOCKET, BITNET_SYMBOL_##NEED,                                     \
     BITNET_SYMBOL_##NEED == BITNET_SYMBOL_REQUIRED, BN_FP_DLSYM_##NAME},
#define BITNET_SYMBOL_UNRESOLVED(NAME, SOCKET)                                \
    {#NAME, SOCKET, BITNET_SYMBOL_EXPORTED, 0, -1},
#include "bitnet_symbols.def"
#undef BITNET_SYMBOL
#undef BITNET_SYMBOL_UNRESOLVED
};

static const bitnet_backend_info_t backends[] = {
#define BITNET_BACKEND(ID, NAME, DESCRIPTION) {NAME, DESCRIPTION},
#include "bitnet_backends.def"
#undef BITNET_BACKEND
};

#define COUNT(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

static int bad_index(const char *fn, int32_t index, int32_t count, int null)
{
    if (null)
        return bn_error(BITNET_E_INVALID_ARG, "%s: out is NULL", fn);
    return bn_error(BITNET_E_INVALID_ARG, "%s: index %d is out of range 0..%d",
                    fn, (int)index, (int)count - 1);
}

BITNET_API int32_t bitnet_bridge_error_count(void) { return COUNT(errors); }

BITNET_API int bitnet_bridge_error_info(int32_t index, bitnet_error_info_t *out)
{
    if (!out || index < 0 || index >= COUNT(errors))
        return bad_index("bitnet_bridge_error_info", index, COUNT(errors),
                         !out);
    *out = errors[index];
    return BITNET_OK;
}

BITNET_API int32_t bitnet_bridge_symbol_count(void) { return COUNT(symbols); }

BITNET_API int bitnet_bridge_symbol_info(int32_t index,
                                         bitnet_symbol_info_t *out)
{
    if (!out || index < 0 || index >= COUNT(symbols))
        return bad_index("bitnet_bridge_symbol_info", index, COUNT(symbols),
                         !out);
    *out = symbols[index];
    return BITNET_OK;
}

BITNET_API int32_t bitnet_bridge_backend_count(void) { return COUNT(backends); }

BITNET_API int bitnet_bridge_backend_info(int32_t index,
                                          bitnet_backend_info_t *out)
{
    if (!out || index < 0 || index >= COUNT(backends))
        return bad_index("bitnet_bridge_backend_info", index, COUNT(backends),
                         !out);
    *out = backends[index];
    return BITNET_OK;
}
