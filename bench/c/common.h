/* Shared helpers of the benchmark's C programs: a monotonic clock and argument parsing. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* (Each program defines _GNU_SOURCE before any include, for sched_setaffinity.) */

/* CLOCK_MONOTONIC in seconds: the same clock as Python's time.monotonic(). */
static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline long arg_long(const char *text)
{
    char *end;
    long v = strtol(text, &end, 0);
    if (*text == '\0' || *end != '\0') {
        fprintf(stderr, "bad number: %s\n", text);
        exit(2);
    }
    return v;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of n sorted values. */
static inline double quantile(const double *sorted, long n, double q)
{
    if (n <= 0)
        return 0.0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return sorted[i];
}

/* Pin the calling process to `cpu` (-1: leave it to the scheduler). */
static inline void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        perror("sched_setaffinity");
}
#endif
