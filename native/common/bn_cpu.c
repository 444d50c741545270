/* bn_cpu.c — runtime CPU feature detection.  See bn_cpu.h. */
#include "bn_cpu.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BN_X86 1
#endif

/* Filled once, before anyone reads it. */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static bitnet_capabilities_t caps;

#ifdef BN_X86
static unsigned long long xgetbv0(void)
{
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}
#endif

static void detect(void)
{
    memset(&caps, 0, sizeof caps);
#ifdef BN_X86
    unsigned int a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
        unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
        int ymm_os = (xcr0 & 0x6) == 0x6;            /* XMM + YMM state */
        int zmm_os = (xcr0 & 0xE6) == 0xE6;          /* + opmask, ZMM   */
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
            int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
            caps.has_avx2 = avx2 && fma && f16c && ymm_os;
            caps.has_avx512 = avx512f && zmm_os;
        }
    }
#endif
#if defined(__aarch64__) || defined(__ARM_NEON)
    caps.has_neon = 1;
#endif
    /* GPU back ends are not built into the reference engine: has_cuda,
     * has_metal and has_hip stay 0 (true only when built with one and a
     * device is present). */
}

void bn_cpu_capabilities(bitnet_capabilities_t *out)
{
    pthread_once(&once, detect);
    *out = caps;
}

int bn_cpu_has_avx2(void)
{
    bitnet_capabilities_t c;
    bn_cpu_capabilities(&c);
    return c.has_avx2;
}

int bn_cpu_has_avx512(void)
{
    bitnet_capabilities_t c;
    bn_cpu_capabilities(&c);
    return c.has_avx512;
}
