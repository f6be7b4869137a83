/*
 * qgemm_threads.c -- qg_run_units: a parallel loop over units on the persistent worker threads of
 * bitconv_pool.c, never waiting for a thread without work.
 *
 * Units are taken from a shared counter by the caller and by the pool's workers that join the job; the
 * caller returns once its own claims are done and every worker that joined has left (a worker finishes the
 * units it claimed). A worker that never gets a core joins no job, so nobody waits for it. Threads started
 * per call (the previous design here) cost ~30-40 us each, and a network at batch 1 makes dozens of these
 * calls; the pool's workers spin for a while after each job, so the next layer finds them running. When
 * another caller holds the pool (a second Python thread, the GIL released), the job runs on threads of its
 * own (bg_parallel), as bc_pool_run does for the binary convolution.
 *
 * Each participant has its own zeroed scratch of scratch_bytes (allocated on joining; one that cannot
 * allocate claims nothing).
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "bitconv.h"
#include "qgemm.h"

typedef struct {
    atomic_size_t next;
    size_t units, scratch_bytes;
    qg_unit_fn fn;
    void *user;
    void *caller_scratch;
} qg_job;

/* claims and runs units until none is left */
static void job_work(qg_job *job, void *scratch)
{
    for (;;) {
        const size_t u = atomic_fetch_add(&job->next, 1);
        if (u >= job->units)
            return;
        job->fn(job->user, u, scratch);
    }
}

static void job_join(void *ctx) /* a worker's (or a bg_parallel thread's) part: scratch of its own */
{
    qg_job *job = (qg_job *)ctx;
    void *scratch = job->scratch_bytes ? calloc(1, job->scratch_bytes) : NULL;
    if (!job->scratch_bytes || scratch)
        job_work(job, scratch);
    free(scratch);
}

static void job_self(void *ctx) /* the caller's part, with the scratch it allocated */
{
    qg_job *job = (qg_job *)ctx;
    job_work(job, job->caller_scratch);
}

static void job_task(void *ctx, int t, int n) /* the same for bg_parallel, whose thread 0 is the caller */
{
    (void)n;
    if (t == 0)
        job_self(ctx);
    else
        job_join(ctx);
}

int qg_run_units(size_t units, int nthreads, qg_unit_fn fn, void *user, size_t scratch_bytes)
{
    if (units == 0)
        return 0;
    void *scratch = scratch_bytes ? calloc(1, scratch_bytes) : NULL;
    if (scratch_bytes && !scratch)
        return -1;
    if ((size_t)nthreads > units)
        nthreads = (int)units;
    if (nthreads <= 1) { /* all units here, in order */
        for (size_t u = 0; u < units; u++)
            fn(user, u, scratch);
        free(scratch);
        return 0;
    }
    qg_job job;
    atomic_init(&job.next, 0);
    job.units = units, job.scratch_bytes = scratch_bytes, job.fn = fn, job.user = user, job.caller_scratch = scratch;
    bc_pool_run_split(nthreads, job_join, job_self, &job, job_task);
    free(scratch);
    return 0;
}
