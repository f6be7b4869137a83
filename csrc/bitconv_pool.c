/*
 * bitconv_pool.c -- persistent worker threads for the binary convolution (see bc_pool_run in bitconv.h).
 *
 * Why: threads started per call (bg_parallel) begin only when the OS -- on a VM, the hypervisor -- resumes the
 * CPU they land on. On the 2-vCPU VM this was measured on, a 1.3 ms convolution called after 1 ms of idleness
 * ran at one-thread speed (median 2.45 ms on 2 threads, 2.45 ms on 1): the main thread had taken every block by
 * the time the second thread ran. Workers that stay and spin for a while after each job (as OpenMP's do: torch
 * spins for its own threads) are running when the next layer's call comes.
 *
 * Protocol. A job is fn(ctx) run by the caller and by up to `want` workers; fn takes its work from a shared
 * queue (bc_task's atomic block counter), so the caller alone completes it and workers only speed it up. The
 * caller publishes (fn, ctx, want), resets `state` and bumps `gen` (under the mutex, broadcasting to sleepers).
 * A worker that sees a new generation joins by incrementing state's count with a CAS -- unless the job is
 * already closed or full. When its own fn returns, the caller closes the job (sets CLOSED) and waits only for
 * the workers inside; a late worker sees CLOSED and never touches ctx (which lives on the caller's stack).
 *
 * Workers spin on `gen` for up to BC_SPIN_NS after their last job (pause loop, clock checked every 64 turns),
 * then sleep on the condition variable. One caller at a time owns the pool; a concurrent caller (another Python
 * thread, the GIL being released) runs its job on threads of its own (bg_parallel). After fork() the child
 * has no workers: an atfork handler resets the pool there.
 */
#include "bitconv.h"

#if !defined(_WIN32)
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define BC_SPIN_NS 1000000L /* 1 ms: the gaps between a network's layers are tens of microseconds */
#define BC_CLOSED 0x80000000u
#define BC_MAX_WORKERS 255

#if LB_X86
#include <immintrin.h>
#define bc_cpu_relax() _mm_pause()
#else
#define bc_cpu_relax() ((void)0)
#endif

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;   /* job generation */
    atomic_uint state; /* workers inside the current job | BC_CLOSED */
    atomic_int owner;  /* 1 while a caller runs a job */
    int nworkers;      /* started (under mu) */
    _Atomic(bc_job_fn) fn;
    _Atomic(void *) ctx;
    atomic_uint want; /* workers the job may take */
} bc_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, BC_CLOSED, 0, 0, NULL, NULL, 0};

static pthread_once_t bc_pool_once = PTHREAD_ONCE_INIT;

static void bc_pool_after_fork(void) /* in the child: the workers did not survive the fork */
{
    pthread_mutex_init(&bc_pool.mu, NULL);
    pthread_cond_init(&bc_pool.cv, NULL);
    bc_pool.nworkers = 0;
    atomic_store(&bc_pool.owner, 0);
    atomic_store(&bc_pool.state, BC_CLOSED);
}

static void bc_pool_init(void)
{
    pthread_atfork(NULL, NULL, bc_pool_after_fork);
}

static long long bc_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *bc_worker(void *unused)
{
    (void)unused;
    unsigned seen = atomic_load(&bc_pool.gen);
    for (;;) {
        /* wait for a new job: spin for a while, then sleep */
        unsigned g = atomic_load(&bc_pool.gen);
        if (g == seen) {
            const long long until = bc_now_ns() + BC_SPIN_NS;
            for (unsigned i = 1; (g = atomic_load(&bc_pool.gen)) == seen; i++) {
                bc_cpu_relax();
                if (i % 64 == 0 && bc_now_ns() > until)
                    break;
            }
            if (g == seen) {
                pthread_mutex_lock(&bc_pool.mu);
                while ((g = atomic_load(&bc_pool.gen)) == seen)
                    pthread_cond_wait(&bc_pool.cv, &bc_pool.mu);
                pthread_mutex_unlock(&bc_pool.mu);
            }
        }
        seen = g;
        /* join it, unless it is closed or has all the workers it wants */
        unsigned s = atomic_load(&bc_pool.state);
        while (!(s & BC_CLOSED) && s < atomic_load(&bc_pool.want)) {
            if (atomic_compare_exchange_weak(&bc_pool.state, &s, s + 1)) {
                atomic_load(&bc_pool.fn)(atomic_load(&bc_pool.ctx));
                atomic_fetch_sub(&bc_pool.state, 1);
                break;
            }
        }
    }
    return NULL;
}

void bc_pool_run(int nthreads, bc_job_fn fn, void *ctx, bg_task_fn fallback)
{
    bc_pool_run_split(nthreads, fn, fn, ctx, fallback);
}

void bc_pool_run_split(int nthreads, bc_job_fn fn, bc_job_fn self, void *ctx, bg_task_fn fallback)
{
    if (nthreads <= 1) {
        self(ctx);
        return;
    }
    if (nthreads > BC_MAX_WORKERS + 1)
        nthreads = BC_MAX_WORKERS + 1;
    pthread_once(&bc_pool_once, bc_pool_init);
    int expected = 0;
    if (!atomic_compare_exchange_strong(&bc_pool.owner, &expected, 1)) { /* someone else's job is running */
        bg_parallel(nthreads, fallback, ctx);
        return;
    }
    pthread_mutex_lock(&bc_pool.mu);
    while (bc_pool.nworkers < nthreads - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &attr, bc_worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break; /* fewer helpers (resource limits): the caller still completes the job */
        bc_pool.nworkers++;
    }
    atomic_store(&bc_pool.fn, fn);
    atomic_store(&bc_pool.ctx, ctx);
    atomic_store(&bc_pool.want, (unsigned)(nthreads - 1));
    atomic_store(&bc_pool.state, 0u); /* open (after the job's fields: a worker's CAS reads them after this) */
    atomic_fetch_add(&bc_pool.gen, 1u);
    pthread_cond_broadcast(&bc_pool.cv);
    pthread_mutex_unlock(&bc_pool.mu);

    self(ctx);

    atomic_fetch_or(&bc_pool.state, BC_CLOSED); /* late workers stay out; wait for those inside */
    while ((atomic_load(&bc_pool.state) & ~BC_CLOSED) != 0)
        bc_cpu_relax();
    atomic_store(&bc_pool.owner, 0);
}

#else /* no pthreads: the per-call threads of bg_parallel (sequential there) */
void bc_pool_run_split(int nthreads, bc_job_fn fn, bc_job_fn self, void *ctx, bg_task_fn fallback)
{
    (void)fn;
    if (nthreads <= 1)
        self(ctx);
    else
        bg_parallel(nthreads, fallback, ctx);
}

void bc_pool_run(int nthreads, bc_job_fn fn, void *ctx, bg_task_fn fallback)
{
    bc_pool_run_split(nthreads, fn, fn, ctx, fallback);
}
#endif
