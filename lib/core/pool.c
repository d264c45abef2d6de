#include "core/pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"

static _Thread_local const loom__pool *current_pool;

static void ring_push(loom__pool *p, loom__job job)
{
    p->ring[(p->head + p->count) % p->cap] = job;
    p->count++;
}

static bool ring_grow(loom__pool *p)
{
    size_t ncap = p->cap * 2;
    loom__job *n = malloc(ncap * sizeof *n);
    if (!n)
        return false;
    for (size_t i = 0; i < p->count; i++)
        n[i] = p->ring[(p->head + i) % p->cap];
    free(p->ring);
    p->ring = n;
    p->cap = ncap;
    p->head = 0;
    return true;
}

/* Waking a sleeping worker costs a system call on the submitter and a
 * context switch, and on a machine with few CPUs a woken worker competes
 * with the submitter for a CPU: when handlers are short, one awake worker
 * keeps up, and waking another one for every job is what made throughput
 * collapse with many calls in flight. So while jobs are quick (none of the
 * last FAST_STREAK took two coarse clock ticks, ~2-8 ms) and the
 * queue is short, a job submitted while a worker is running is left to
 * the workers already awake, provided every sleeper is in a timed wait
 * (RECHECK_MS): a job never waits longer than that for a free worker,
 * even when the running one turns out slow. A slow job resets the streak;
 * a worker whose timed wait found nothing sleeps untimed next (an idle
 * pool does not keep waking up), and is then always signalled. */
#define FAST_STREAK 64
#define SHORT_QUEUE 32
#define RECHECK_MS 2

static bool wake_needed(const loom__pool *p)
{
    if (p->sleeping == 0)
        return false;
    if (p->fast_streak < FAST_STREAK || p->count > SHORT_QUEUE || p->sleeping_timed < p->sleeping)
        return true;
    if (p->busy + p->sleeping < p->nthreads)
        return false;    /* one is between jobs and will take it */
    return p->busy == 0; /* nobody awake */
}

static void signal_work(loom__pool *p)
{
    if (wake_needed(p))
        pthread_cond_signal(&p->work_cv);
}

/* Waits for work under p->mu; *idle is set when a timed wait found none. */
static void wait_for_work(loom__pool *p, bool *idle)
{
    bool timed = p->fast_streak >= FAST_STREAK && !*idle;
    p->sleeping++;
    p->sleeping_timed += timed;
    int rc = 0;
    if (timed) {
        struct timespec ts = loom__mono_after(RECHECK_MS);
        rc = pthread_cond_timedwait(&p->work_cv, &p->mu, &ts);
    } else {
        pthread_cond_wait(&p->work_cv, &p->mu);
    }
    p->sleeping--;
    p->sleeping_timed -= timed;
    *idle = timed && rc == ETIMEDOUT && p->count == 0;
}

static void *worker_main(void *arg)
{
    loom__pool *p = arg;
    current_pool = p;
    bool idle = false;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->count == 0 && !p->stopping)
            wait_for_work(p, &idle);
        if (p->count == 0)
            break; /* stopping and drained */
        idle = false;
        loom__job job = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        p->busy++;
        pthread_mutex_unlock(&p->mu);
        int64_t t0 = loom__coarse_ns();
        job.fn(job.a, job.b, job.c);
        int64_t t1 = loom__coarse_ns();
        pthread_mutex_lock(&p->mu);
        p->busy--;
        if (t1 - t0 < loom__coarse_sure_ns()) {
            if (p->fast_streak < FAST_STREAK)
                p->fast_streak++;
        } else {
            p->fast_streak = 0;
        }
        if (p->count == 0 && p->busy == 0)
            pthread_cond_broadcast(&p->idle_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* --- timer heap (under p->timer_mu) ------------------------------------------- */

static void heap_swap(loom__pool *p, size_t i, size_t j)
{
    loom__timer *t = p->heap[i];
    p->heap[i] = p->heap[j];
    p->heap[j] = t;
    p->heap[i]->heap_index = i;
    p->heap[j]->heap_index = j;
}

static void heap_up(loom__pool *p, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (p->heap[parent]->when_mono <= p->heap[i]->when_mono)
            break;
        heap_swap(p, i, parent);
        i = parent;
    }
}

static void heap_down(loom__pool *p, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < p->heap_n && p->heap[l]->when_mono < p->heap[m]->when_mono)
            m = l;
        if (r < p->heap_n && p->heap[r]->when_mono < p->heap[m]->when_mono)
            m = r;
        if (m == i)
            return;
        heap_swap(p, i, m);
        i = m;
    }
}

static void heap_remove(loom__pool *p, size_t i)
{
    p->heap[i]->heap_index = SIZE_MAX;
    p->heap_n--;
    if (i == p->heap_n)
        return;
    p->heap[i] = p->heap[p->heap_n];
    p->heap[i]->heap_index = i;
    heap_down(p, i);
    heap_up(p, i);
}

/* Submits under p->mu; jobs submitted here must never be lost. */
static void submit_locked(loom__pool *p, loom__job job)
{
    if (p->count == p->cap && !ring_grow(p)) {
        /* Out of memory: run it here rather than lose it. */
        pthread_mutex_unlock(&p->mu);
        job.fn(job.a, job.b, job.c);
        pthread_mutex_lock(&p->mu);
        return;
    }
    ring_push(p, job);
    signal_work(p);
}

/* Hands a fired timer's job to the workers (no lock held). */
static void submit_fired(loom__pool *p, loom__job job)
{
    pthread_mutex_lock(&p->mu);
    submit_locked(p, job);
    pthread_mutex_unlock(&p->mu);
}

static void *timer_main(void *arg)
{
    loom__pool *p = arg;
    pthread_mutex_lock(&p->timer_mu);
    for (;;) {
        if (p->timer_stopping && p->heap_n == 0)
            break;
        int64_t now = loom__mono_ms();
        while (p->heap_n && (p->heap[0]->when_mono <= now || p->timer_stopping)) {
            loom__timer *t = p->heap[0];
            heap_remove(p, 0);
            loom__job job = t->job; /* t may be gone once it ran */
            bool here = t->on_timer_thread;
            pthread_mutex_unlock(&p->timer_mu);
            if (here)
                job.fn(job.a, job.b, job.c);
            else
                submit_fired(p, job);
            pthread_mutex_lock(&p->timer_mu);
        }
        if (p->timer_stopping)
            continue;
        if (p->heap_n == 0) {
            pthread_cond_wait(&p->timer_cv, &p->timer_mu);
        } else {
            int64_t wait_ms = p->heap[0]->when_mono - now;
            struct timespec ts = loom__mono_after(wait_ms);
            pthread_cond_timedwait(&p->timer_cv, &p->timer_mu, &ts);
        }
    }
    pthread_mutex_unlock(&p->timer_mu);
    return NULL;
}

void loom__timer_add(loom__pool *p, loom__timer *t, uint32_t delay_ms)
{
    pthread_mutex_lock(&p->timer_mu);
    bool grow_failed = false;
    if (!p->timer_stopping && p->heap_n == p->heap_cap) {
        size_t ncap = p->heap_cap ? p->heap_cap * 2 : 64;
        loom__timer **n = realloc(p->heap, ncap * sizeof *n);
        if (n) {
            p->heap = n;
            p->heap_cap = ncap;
        }
        grow_failed = !n;
    }
    if (p->timer_stopping || grow_failed) {
        /* Stopping, or out of memory: fire early rather than never. */
        t->heap_index = SIZE_MAX;
        pthread_mutex_unlock(&p->timer_mu);
        submit_fired(p, t->job);
        return;
    }
    t->when_mono = loom__mono_ms() + delay_ms;
    t->heap_index = p->heap_n;
    p->heap[p->heap_n++] = t;
    heap_up(p, t->heap_index);
    if (t->heap_index == 0)
        pthread_cond_signal(&p->timer_cv);
    pthread_mutex_unlock(&p->timer_mu);
}

bool loom__timer_cancel(loom__pool *p, loom__timer *t)
{
    pthread_mutex_lock(&p->timer_mu);
    bool scheduled = t->heap_index != SIZE_MAX && t->heap_index < p->heap_n &&
                     p->heap[t->heap_index] == t;
    if (scheduled)
        heap_remove(p, t->heap_index);
    pthread_mutex_unlock(&p->timer_mu);
    return scheduled;
}

/* --- pool ---------------------------------------------------------------- */

static pthread_condattr_t *monotonic_attr(pthread_condattr_t *a)
{
    pthread_condattr_init(a);
    pthread_condattr_setclock(a, CLOCK_MONOTONIC);
    return a;
}

loom_err loom__pool_start(loom__pool *p, unsigned n, size_t cap)
{
    memset(p, 0, sizeof *p);
    pthread_condattr_t ca;
    loom__mutex_init_adaptive(&p->mu);
    loom__mutex_init_adaptive(&p->timer_mu);
    pthread_cond_init(&p->work_cv, monotonic_attr(&ca));
    pthread_cond_init(&p->idle_cv, &ca);
    pthread_cond_init(&p->timer_cv, &ca);
    pthread_condattr_destroy(&ca);
    p->cap = cap ? cap : 1;
    p->ring = malloc(p->cap * sizeof *p->ring);
    p->threads = calloc(n, sizeof *p->threads);
    if (!p->ring || !p->threads)
        goto fail;
    if (pthread_create(&p->timer_thread, NULL, timer_main, p) != 0)
        goto fail;
    p->timer_started = true;
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
            loom__pool_stop(p);
            return LOOM_EIO;
        }
        pthread_mutex_lock(&p->mu);
        p->nthreads++;
        pthread_mutex_unlock(&p->mu);
    }
    return LOOM_OK;
fail:
    free(p->ring);
    free(p->threads);
    p->ring = NULL;
    p->threads = NULL;
    return LOOM_ENOMEM;
}

loom_err loom__pool_submit(loom__pool *p, loom__job job)
{
    pthread_mutex_lock(&p->mu);
    loom_err err = LOOM_OK;
    if (p->stopping)
        err = LOOM_ECLOSED;
    else if (p->count == p->cap)
        err = LOOM_EOVERLOAD;
    else {
        ring_push(p, job);
        signal_work(p);
    }
    pthread_mutex_unlock(&p->mu);
    return err;
}

loom_err loom__pool_submit_always(loom__pool *p, loom__job job)
{
    pthread_mutex_lock(&p->mu);
    if (!p->ring || p->nthreads == 0) {
        pthread_mutex_unlock(&p->mu);
        return LOOM_ECLOSED;
    }
    submit_locked(p, job);
    pthread_mutex_unlock(&p->mu);
    return LOOM_OK;
}

bool loom__pool_wait_idle(loom__pool *p, int64_t deadline_mono)
{
    pthread_mutex_lock(&p->mu);
    /* A worker waiting for its own pool would wait for itself. */
    size_t self = current_pool == p ? 1 : 0;
    while ((p->count > 0 || p->busy > self) && loom__mono_ms() < deadline_mono) {
        int64_t wait_ms = deadline_mono - loom__mono_ms();
        struct timespec ts = loom__mono_after(wait_ms > 50 ? 50 : wait_ms);
        pthread_cond_timedwait(&p->idle_cv, &p->mu, &ts);
    }
    bool idle = p->count == 0 && p->busy <= self;
    pthread_mutex_unlock(&p->mu);
    return idle;
}

void loom__pool_stop(loom__pool *p)
{
    if (!p->ring)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_lock(&p->timer_mu);
    p->timer_stopping = true;
    pthread_cond_broadcast(&p->timer_cv);
    pthread_mutex_unlock(&p->timer_mu);
    /* The timer fires everything it holds into the queue, then the workers
     * drain the queue and exit. */
    if (p->timer_started)
        pthread_join(p->timer_thread, NULL);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* With no worker (start failed half-way) run what is left here. */
    while (p->count) {
        loom__job job = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        job.fn(job.a, job.b, job.c);
    }
    free(p->ring);
    free(p->threads);
    free(p->heap);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->timer_mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->idle_cv);
    pthread_cond_destroy(&p->timer_cv);
    memset(p, 0, sizeof *p);
}

bool loom__pool_is_worker(const loom__pool *p) { return current_pool == p; }
