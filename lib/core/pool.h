/* Internal: the worker pool (a bounded job queue and N threads) and the
 * timer (one thread, a min-heap of cancellable entries). Both locks are
 * adaptive (they spin briefly before sleeping): their critical sections
 * are a few instructions long, and on a 2-vCPU machine sleeping in the
 * kernel on a contended lock costs far more than the work it guards. */
#ifndef LOOM_CORE_POOL_H
#define LOOM_CORE_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom.h"

typedef void (*loom__job_fn)(void *a, void *b, uintptr_t c);

typedef struct loom__job {
    loom__job_fn fn;
    void *a, *b;
    uintptr_t c;
} loom__job;

/* A timer entry, embedded in the object it belongs to. */
typedef struct loom__timer {
    int64_t when_mono;
    size_t heap_index; /* SIZE_MAX when not scheduled */
    loom__job job;     /* submitted to the pool when it fires */
    /* Run job on the timer thread itself instead of queueing it, so that it
     * never waits for a free worker (a call's deadline must hold while slow
     * handlers occupy every worker). Only for short jobs that never block;
     * the entry may be freed by the job. */
    bool on_timer_thread;
} loom__timer;

typedef struct loom__pool {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* jobs available or stopping */
    pthread_cond_t idle_cv; /* queue empty and nobody busy */
    loom__job *ring;
    size_t cap, head, count;
    size_t busy;
    bool stopping;
    pthread_t *threads;
    unsigned nthreads;
    /* Waking (see wake_needed in pool.c): workers asleep in work_cv, those
     * of them in a short timed wait, and how many jobs in a row finished
     * within two coarse clock ticks. */
    unsigned sleeping, sleeping_timed;
    unsigned fast_streak;

    /* The timer has its own lock so that arming and cancelling a call's
     * deadline never contends with the job queue. Never held while taking
     * mu. */
    pthread_mutex_t timer_mu;
    pthread_cond_t timer_cv;
    loom__timer **heap;
    size_t heap_n, heap_cap;
    bool timer_stopping;
    pthread_t timer_thread;
    bool timer_started;
} loom__pool;

/* Starts n workers with a queue of cap jobs, and the timer thread. */
loom_err loom__pool_start(loom__pool *p, unsigned n, size_t cap);
/* Queues a job. LOOM_EOVERLOAD when the queue is full, LOOM_ECLOSED after
 * stop began. */
loom_err loom__pool_submit(loom__pool *p, loom__job job);
/* Like submit, but never refuses for lack of room (for work that must not
 * be lost, e.g. completing a call); grows the queue. */
loom_err loom__pool_submit_always(loom__pool *p, loom__job job);
/* Schedules t->job to be submitted after delay_ms. The entry must stay
 * valid until it fires or is cancelled. */
void loom__timer_add(loom__pool *p, loom__timer *t, uint32_t delay_ms);
/* Unschedules; true when it was still scheduled (so it will not fire). */
bool loom__timer_cancel(loom__pool *p, loom__timer *t);
/* Waits until the queue is empty and no job runs, or deadline (mono ms).
 * True when idle. */
bool loom__pool_wait_idle(loom__pool *p, int64_t deadline_mono);
/* Fires every scheduled timer now, runs every queued job, joins all
 * threads. Jobs running then see their runtime stopping. */
void loom__pool_stop(loom__pool *p);
/* True when called from one of this pool's worker threads. */
bool loom__pool_is_worker(const loom__pool *p);

#endif
