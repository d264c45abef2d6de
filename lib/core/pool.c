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

static void *worker_main(void *arg)
{
    loom__pool *p = arg;
    current_pool = p;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->count == 0 && !p->stopping)
            pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->count == 0)
            break; /* stopping and drained */
        loom__job job = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
        p->busy++;
        pthread_mutex_unlock(&p->mu);
        job.fn(job.a, job.b, job.c);
        pthread_mutex_lock(&p->mu);
        p->busy--;
        if (p->count == 0 && p->busy == 0)
            pthread_cond_broadcast(&p->idle_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* --- timer heap (under p->mu) ------------------------------------------- */

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

/* Submits under the lock; the timer's jobs must never be lost. */
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
    pthread_cond_signal(&p->work_cv);
}

static void *timer_main(void *arg)
{
    loom__pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->stopping && p->heap_n == 0)
            break;
        int64_t now = loom__mono_ms();
        while (p->heap_n && (p->heap[0]->when_mono <= now || p->stopping)) {
            loom__timer *t = p->heap[0];
            heap_remove(p, 0);
            if (t->on_timer_thread) {
                loom__job job = t->job; /* t may be gone once it ran */
                pthread_mutex_unlock(&p->mu);
                job.fn(job.a, job.b, job.c);
                pthread_mutex_lock(&p->mu);
            } else {
                submit_locked(p, t->job);
            }
        }
        if (p->stopping)
            continue;
        if (p->heap_n == 0) {
            pthread_cond_wait(&p->timer_cv, &p->mu);
        } else {
            int64_t wait_ms = p->heap[0]->when_mono - now;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += wait_ms / 1000;
            ts.tv_nsec += (wait_ms % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&p->timer_cv, &p->mu, &ts);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void loom__timer_add(loom__pool *p, loom__timer *t, uint32_t delay_ms)
{
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        t->heap_index = SIZE_MAX;
        submit_locked(p, t->job);
        pthread_mutex_unlock(&p->mu);
        return;
    }
    if (p->heap_n == p->heap_cap) {
        size_t ncap = p->heap_cap ? p->heap_cap * 2 : 64;
        loom__timer **n = realloc(p->heap, ncap * sizeof *n);
        if (!n) {
            t->heap_index = SIZE_MAX;
            submit_locked(p, t->job); /* fire early rather than never */
            pthread_mutex_unlock(&p->mu);
            return;
        }
        p->heap = n;
        p->heap_cap = ncap;
    }
    t->when_mono = loom__mono_ms() + delay_ms;
    t->heap_index = p->heap_n;
    p->heap[p->heap_n++] = t;
    heap_up(p, t->heap_index);
    if (t->heap_index == 0)
        pthread_cond_signal(&p->timer_cv);
    pthread_mutex_unlock(&p->mu);
}

bool loom__timer_cancel(loom__pool *p, loom__timer *t)
{
    pthread_mutex_lock(&p->mu);
    bool scheduled = t->heap_index != SIZE_MAX && t->heap_index < p->heap_n &&
                     p->heap[t->heap_index] == t;
    if (scheduled)
        heap_remove(p, t->heap_index);
    pthread_mutex_unlock(&p->mu);
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
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->idle_cv, monotonic_attr(&ca));
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
        p->nthreads++;
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
        pthread_cond_signal(&p->work_cv);
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
        struct timespec ts;
        int64_t wait_ms = deadline_mono - loom__mono_ms();
        if (wait_ms > 50)
            wait_ms = 50;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += wait_ms * 1000000;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
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
    pthread_cond_broadcast(&p->timer_cv);
    pthread_mutex_unlock(&p->mu);
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
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->idle_cv);
    pthread_cond_destroy(&p->timer_cv);
    memset(p, 0, sizeof *p);
}

bool loom__pool_is_worker(const loom__pool *p) { return current_pool == p; }
