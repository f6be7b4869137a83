/*
 * lowbit_cpu.h -- the one kernel-path enum and CPU-feature detection shared by every native kernel.
 *
 * Every extension (binary GEMM, integer LSTM, ...) is compiled for the baseline ISA; its fast code carries
 * __attribute__((target(...))) and runs only on a path this file says the CPU supports. lowbit_cpu.c is
 * compiled into each extension (one source, one copy per module), and Python (lowbit.kernels.dispatch) picks
 * the path once for all of them and passes its id down.
 *
 * Paths are nested, best last: each one implies every feature of the ones before it, so kernels may test
 * `path >= LB_PATH_AVX2` to mean "at least AVX2". A kernel family without code for a path runs its best code
 * below it (the per-family tables are in bitgemm.h and intlstm.h).
 */
#ifndef LOWBIT_CPU_H
#define LOWBIT_CPU_H

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LB_X86 1
#else
#define LB_X86 0
#endif

typedef enum {
    LB_PATH_PORTABLE = 0, /* plain C for the baseline ISA (any CPU) */
    LB_PATH_POPCNT = 1,   /* + hardware POPCNT */
    LB_PATH_AVX2 = 2,     /* + AVX2 (and the OS saves ymm state) */
    LB_PATH_AVX512 = 3,   /* + AVX-512F and AVX-512 VPOPCNTDQ (and the OS saves zmm state) */
    LB_PATH_AVX512VNNI = 4, /* + AVX-512 VNNI, BW and VL (vpdpbusd: the k-bit GEMM's int8 kernel) */
    LB_PATH_AMX = 5,        /* + AMX-TILE and AMX-INT8, the OS saving tile state and granting it to this
                               process (tdpbusd: the int8 kernel on 16 x 64-byte tiles) */
    LB_NPATHS = 6,
    LB_PATH_AUTO = -1 /* only an argument value: "the best this CPU supports" */
} lb_path;

const char *lb_path_name(int path); /* "portable", "popcnt", "avx2", "avx512", "avx512vnni", "amx"; "?" outside */
int lb_path_supported(int path);     /* 1 if this CPU (and OS) can run the path */
int lb_best_path(void);
/* path itself if supported, the best supported path for LB_PATH_AUTO, -1 for anything else */
int lb_resolve_path(int path);
/* path if this CPU supports it, else (any other value, LB_PATH_AUTO included) the best path: the drivers' choice */
int lb_path_or_best(int path);

/* CPU features the kernels test, one bit each (the report of lowbit.kernels.cpu_features). */
typedef enum {
    LB_CPU_POPCNT = 0,
    LB_CPU_AVX2,
    LB_CPU_AVX512F,
    LB_CPU_AVX512BW,
    LB_CPU_AVX512VL,
    LB_CPU_AVX512VPOPCNTDQ,
    LB_CPU_AVX512VNNI,
    LB_CPU_AVX512BITALG,
    LB_CPU_AVXVNNI,
    LB_CPU_AMXTILE,
    LB_CPU_AMXINT8,
    LB_CPU_FMA, /* FMA3 (with the ymm state): the AVX2 float32 tiles need it */
    LB_CPU_NFEATURES
} lb_cpu_feature;

/* Bit f set: the CPU has feature f and (for vector extensions) the OS saves the registers it needs. Detected
 * once (cpuid + xgetbv), then cached. */
unsigned lb_cpu_features(void);
int lb_cpu_has(lb_cpu_feature f);
const char *lb_cpu_feature_name(int f); /* GCC's target() spelling: "avx512vpopcntdq", ...; "?" outside */

/* ---- threads: the fork-join of every extension (compiled into each, like the rest of this file) -------
 * fn(ctx, t, nthreads) for t in [0, nthreads) (at most LB_MAX_THREADS): the caller runs share 0, a pthread
 * started per call each other share, all joined before the return (simple, no idle pool, fork-safe); a
 * share whose thread cannot be started (resource limits) runs on the caller. */
#define LB_MAX_THREADS 256
typedef void (*lb_task_fn)(void *ctx, int t, int nthreads);
void lb_parallel(int nthreads, lb_task_fn fn, void *ctx);

#endif /* LOWBIT_CPU_H */
