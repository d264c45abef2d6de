/* Shared by the benchmark programs in bench/: a monotonic clock, latency
 * samples with percentiles, peak RSS, a bounded payload of a given size, and
 * the one-line JSON report bench/run.py parses. Header-only (static
 * functions) so each program stays a single file. */
#ifndef LOOM_BENCH_H
#define LOOM_BENCH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_sleep(double secs)
{
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Latency samples in microseconds; grows by doubling, aborts when out of
 * memory (a benchmark has no useful way to go on). Not locked. */
typedef struct bench_samples {
    double *v;
    size_t n, cap;
} bench_samples;

static inline void bench_sample_add(bench_samples *s, double us)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : (size_t)1 << 16;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            abort();
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = us;
}

static inline void bench_samples_merge(bench_samples *into, const bench_samples *from)
{
    for (size_t i = 0; i < from->n; i++)
        bench_sample_add(into, from->v[i]);
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The p-quantile (0..1), sorting the samples in place; 0 without samples. */
static inline double bench_pct(bench_samples *s, double p)
{
    if (!s->n)
        return 0;
    qsort(s->v, s->n, sizeof *s->v, bench_cmp_double);
    return s->v[(size_t)(p * (double)(s->n - 1))];
}

/* Peak resident set size of this program, KiB: VmHWM, which starts again
 * at exec (getrusage's ru_maxrss keeps the high-water mark of the process
 * that forked us, e.g. a Python driver's). */
static inline long bench_maxrss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

/* {"n":41,"pad":"xxx..."}: a JSON object of about `bytes` bytes of text
 * (never less than the 19 bytes of the object around an empty pad). The
 * caller frees it. */
static inline char *bench_payload_text(size_t bytes)
{
    static const char head[] = "{\"n\":41,\"pad\":\"", tail[] = "\"}";
    size_t fixed = sizeof head - 1 + sizeof tail - 1;
    size_t pad = bytes > fixed ? bytes - fixed : 0;
    char *s = malloc(fixed + pad + 1);
    if (!s)
        abort();
    memcpy(s, head, sizeof head - 1);
    memset(s + sizeof head - 1, 'x', pad);
    memcpy(s + sizeof head - 1 + pad, tail, sizeof tail);
    return s;
}

/* One result line: {"scenario":..., "ops":..., "seconds":..., "ops_per_s":...,
 * "p50_us":..., "p99_us":..., "maxrss_kb":...}. Sorts lat. */
static inline void bench_report(const char *name, long ops, double secs, bench_samples *lat)
{
    double p50 = bench_pct(lat, 0.50), p99 = bench_pct(lat, 0.99);
    printf("{\"scenario\":\"%s\",\"ops\":%ld,\"seconds\":%.3f,\"ops_per_s\":%.0f,"
           "\"p50_us\":%.3f,\"p99_us\":%.3f,\"maxrss_kb\":%ld}\n",
           name, ops, secs, secs > 0 ? (double)ops / secs : 0.0, p50, p99, bench_maxrss_kb());
    fflush(stdout);
}

#endif
