/*
 * qgemm_threads.c -- qg_run_units: a parallel loop over units that never waits for a thread without work.
 *
 * bg_parallel (bitgemm_driver.c) starts its threads and joins them all: on a machine whose other cores are
 * busy (shared, or another process's thread pool still spinning), a started thread may not get a core for a
 * whole scheduler time slice (milliseconds), and the join waits for it even when the caller has done all
 * the work itself -- at batch 1 that wait was longer than the layer. Here helpers are detached and take units
 * from a shared counter; the caller takes units too, and returns as soon as every unit is *done*. A helper
 * that starts late finds no unit left and exits; the job record (on the heap, reference counted) outlives
 * the call for it. The caller's data (`user`) is only read for claimed units, all finished before return.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "qgemm.h"

#if !defined(_WIN32)
#include <pthread.h>
#define QG_HAVE_PTHREADS 1
#else
#define QG_HAVE_PTHREADS 0
#endif

typedef struct {
    atomic_size_t next, done;
    atomic_int refs;
    size_t units, scratch_bytes;
    qg_unit_fn fn;
    void *user;
} qg_job;

static void job_release(qg_job *job)
{
    if (atomic_fetch_sub(&job->refs, 1) == 1)
        free(job);
}

/* claims and runs units until none is left */
static void job_work(qg_job *job, void *scratch)
{
    for (;;) {
        const size_t u = atomic_fetch_add(&job->next, 1);
        if (u >= job->units)
            return;
        job->fn(job->user, u, scratch);
        atomic_fetch_add(&job->done, 1);
    }
}

#if QG_HAVE_PTHREADS
static void *helper_main(void *p)
{
    qg_job *job = (qg_job *)p;
    /* scratch before the first claim: a helper that cannot allocate claims nothing */
    void *scratch = job->scratch_bytes ? calloc(1, job->scratch_bytes) : NULL;
    if (!job->scratch_bytes || scratch)
        job_work(job, scratch);
    free(scratch);
    job_release(job);
    return NULL;
}
#endif

int qg_run_units(size_t units, int nthreads, qg_unit_fn fn, void *user, size_t scratch_bytes)
{
    if (units == 0)
        return 0;
    void *scratch = scratch_bytes ? calloc(1, scratch_bytes) : NULL;
    if (scratch_bytes && !scratch)
        return -1;
    if (nthreads > 256)
        nthreads = 256;
    if ((size_t)nthreads > units)
        nthreads = (int)units;
    qg_job *job = nthreads > 1 ? (qg_job *)malloc(sizeof(qg_job)) : NULL;
    if (!job) { /* one thread (or no memory for the job record): all units here, in order */
        for (size_t u = 0; u < units; u++)
            fn(user, u, scratch);
        free(scratch);
        return 0;
    }
    atomic_init(&job->next, 0);
    atomic_init(&job->done, 0);
    atomic_init(&job->refs, 1);
    job->units = units;
    job->scratch_bytes = scratch_bytes;
    job->fn = fn;
    job->user = user;
#if QG_HAVE_PTHREADS
    pthread_attr_t attr;
    const int have_attr = pthread_attr_init(&attr) == 0 &&
                          pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
    for (int t = 1; t < nthreads && have_attr; t++) {
        pthread_t th;
        atomic_fetch_add(&job->refs, 1);
        if (pthread_create(&th, &attr, helper_main, job) != 0) {
            atomic_fetch_sub(&job->refs, 1);
            break; /* resource limits: the threads that started (and this one) do the rest */
        }
    }
    if (have_attr)
        pthread_attr_destroy(&attr);
#endif
    job_work(job, scratch);
    /* the units other threads still run: real work, worth waiting for */
    while (atomic_load(&job->done) < units)
        sched_yield();
    free(scratch);
    job_release(job);
    return 0;
}
