/*
 * lowbit_cpu.c -- CPU-feature detection and the kernel-path table (see lowbit_cpu.h).
 *
 * cpuid says what the CPU implements; xgetbv (XCR0) says what the OS saves on a context switch. A vector
 * extension is usable only with both: a kernel running zmm code under an OS that does not save zmm state
 * would see its registers corrupted by any interrupt. (libgcc's __builtin_cpu_supports does the same checks;
 * doing them here gives one table for every extension and features libgcc versions disagree on.)
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* syscall() under -std=c11 */
#endif
#include "lowbit_cpu.h"

#include <stddef.h>

#if !defined(_WIN32)
#include <pthread.h>
#define LB_HAVE_PTHREADS 1
#else
#define LB_HAVE_PTHREADS 0
#endif

#if LB_X86
#include <cpuid.h>
#include <stdint.h>
#endif
#if LB_X86 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

static const char *const lb_path_names[LB_NPATHS] = {"portable", "popcnt", "avx2", "avx512", "avx512vnni", "amx"};

static const char *const lb_feature_names[LB_CPU_NFEATURES] = {
    "popcnt",      "avx2",       "avx512f",      "avx512bw", "avx512vl", "avx512vpopcntdq",
    "avx512vnni", "avx512bitalg", "avxvnni",     "amx-tile", "amx-int8", "fma",
};

#if LB_X86
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0)); /* the mnemonic needs no -mxsave */
    return ((uint64_t)hi << 32) | lo;
}

/* Linux (5.16+) enables the 8 KB AMX tile state per process, on request: a tile instruction before the
 * grant faults (SIGILL). ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18; the grant is for the
 * whole process and the threads it starts. */
static int amx_granted(void)
{
#if defined(__linux__) && defined(SYS_arch_prctl)
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return 0;
#endif
}

static unsigned detect(void)
{
    unsigned a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (c & (1u << 23))
        f |= 1u << LB_CPU_POPCNT;
    const uint64_t xcr0 = (c & (1u << 27)) ? xgetbv0() : 0; /* OSXSAVE: xgetbv is there */
    const int ymm = (xcr0 & 0x06) == 0x06;                 /* xmm + ymm state */
    const int zmm = ymm && (xcr0 & 0xe0) == 0xe0;          /* + opmask, zmm0-15 upper, zmm16-31 */
    if (ymm && (c & (1u << 12)))
        f |= 1u << LB_CPU_FMA;
    if (__get_cpuid_max(0, NULL) < 7)
        return f;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned b7 = b, c7 = c, d7 = d;
    if (ymm && (b7 & (1u << 5)))
        f |= 1u << LB_CPU_AVX2;
    if (zmm && (b7 & (1u << 16))) {
        f |= 1u << LB_CPU_AVX512F;
        if (b7 & (1u << 30)) f |= 1u << LB_CPU_AVX512BW;
        if (b7 & (1u << 31)) f |= 1u << LB_CPU_AVX512VL;
        if (c7 & (1u << 14)) f |= 1u << LB_CPU_AVX512VPOPCNTDQ;
        if (c7 & (1u << 11)) f |= 1u << LB_CPU_AVX512VNNI;
        if (c7 & (1u << 12)) f |= 1u << LB_CPU_AVX512BITALG;
    }
    /* AMX: tile config + data state saved by the OS (XCR0 bits 17, 18), and the process granted it */
    if (zmm && (d7 & (1u << 24)) && (d7 & (1u << 25)) && (xcr0 & (3ull << 17)) == (3ull << 17) && amx_granted())
        f |= (1u << LB_CPU_AMXTILE) | (1u << LB_CPU_AMXINT8);
    if (ymm && a >= 1) { /* eax of leaf 7.0: the highest subleaf */
        __cpuid_count(7, 1, a, b, c, d);
        if (a & (1u << 4))
            f |= 1u << LB_CPU_AVXVNNI;
    }
    return f;
}
#else
static unsigned detect(void) { return 0; }
#endif

unsigned lb_cpu_features(void)
{
    /* bit 31 marks "detected"; racing first calls compute the same value, the atomics keep it defined */
    static unsigned cached = 0;
    unsigned v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (!v) {
        v = detect() | (1u << 31);
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v & ~(1u << 31);
}

int lb_cpu_has(lb_cpu_feature f)
{
    return (int)f >= 0 && f < LB_CPU_NFEATURES && ((lb_cpu_features() >> f) & 1u);
}

const char *lb_cpu_feature_name(int f)
{
    return (f >= 0 && f < LB_CPU_NFEATURES) ? lb_feature_names[f] : "?";
}

const char *lb_path_name(int path)
{
    return (path >= 0 && path < LB_NPATHS) ? lb_path_names[path] : "?";
}

int lb_path_supported(int path)
{
    const unsigned f = lb_cpu_features();
#define LB_HAS(x) ((f >> (x)) & 1u)
    switch (path) {
    case LB_PATH_PORTABLE:
        return 1;
    case LB_PATH_POPCNT:
        return (int)LB_HAS(LB_CPU_POPCNT);
    case LB_PATH_AVX2:
        return (int)(LB_HAS(LB_CPU_POPCNT) & LB_HAS(LB_CPU_AVX2));
    case LB_PATH_AVX512: /* nested: AVX-512 code may call the AVX2 kernels (memory-bound passes do) */
        return (int)(LB_HAS(LB_CPU_POPCNT) & LB_HAS(LB_CPU_AVX2) & LB_HAS(LB_CPU_AVX512F) &
                     LB_HAS(LB_CPU_AVX512VPOPCNTDQ));
    case LB_PATH_AVX512VNNI:
        return lb_path_supported(LB_PATH_AVX512) &&
               (int)(LB_HAS(LB_CPU_AVX512VNNI) & LB_HAS(LB_CPU_AVX512BW) & LB_HAS(LB_CPU_AVX512VL));
    case LB_PATH_AMX:
        return lb_path_supported(LB_PATH_AVX512VNNI) && (int)(LB_HAS(LB_CPU_AMXTILE) & LB_HAS(LB_CPU_AMXINT8));
    default:
        return 0;
    }
#undef LB_HAS
}

int lb_best_path(void)
{
    for (int p = LB_NPATHS - 1; p > 0; p--)
        if (lb_path_supported(p))
            return p;
    return LB_PATH_PORTABLE;
}

int lb_resolve_path(int path)
{
    if (path == LB_PATH_AUTO)
        return lb_best_path();
    return lb_path_supported(path) ? path : -1;
}

int lb_path_or_best(int path)
{
    return path >= 0 && path < LB_NPATHS && lb_path_supported(path) ? path : lb_best_path();
}

/* ---- threads ------------------------------------------------------------------------------------------- */
#if LB_HAVE_PTHREADS
typedef struct {
    lb_task_fn fn;
    void *ctx;
    int t, n;
} lb_thread_arg;

static void *lb_thread_main(void *p)
{
    const lb_thread_arg *a = (const lb_thread_arg *)p;
    a->fn(a->ctx, a->t, a->n);
    return NULL;
}
#endif

void lb_parallel(int nthreads, lb_task_fn fn, void *ctx)
{
    if (nthreads > LB_MAX_THREADS)
        nthreads = LB_MAX_THREADS;
    if (nthreads <= 1) {
        fn(ctx, 0, 1);
        return;
    }
#if LB_HAVE_PTHREADS
    pthread_t th[LB_MAX_THREADS];
    lb_thread_arg args[LB_MAX_THREADS];
    int started[LB_MAX_THREADS];
    for (int t = 1; t < nthreads; t++) {
        args[t].fn = fn;
        args[t].ctx = ctx;
        args[t].t = t;
        args[t].n = nthreads;
        started[t] = pthread_create(&th[t], NULL, lb_thread_main, &args[t]) == 0;
    }
    fn(ctx, 0, nthreads);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else /* could not start a thread (resource limits): do its share here */
            fn(ctx, t, nthreads);
    }
#else
    for (int t = 0; t < nthreads; t++)
        fn(ctx, t, nthreads);
#endif
}
