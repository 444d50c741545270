/* bn_cpu.h — runtime CPU feature detection (cached after the first call). */
#ifndef BN_CPU_H
#define BN_CPU_H

#include "bitnet.h"

void bn_cpu_capabilities(bitnet_capabilities_t *out);
int bn_cpu_has_avx2(void); /* AVX2 + FMA + F16C, usable by the OS */
int bn_cpu_has_avx512(void);

#endif
