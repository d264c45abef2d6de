/*
 * A test helper program for the fault and overload tests (tests/test_faults.c,
 * tests/test_overload.c): a service whose handlers misbehave on purpose,
 * run through loom_main() like any loom program (--services, --broker,
 * --http, --instance, --set ...).
 *
 * Service "faults" v1 (HTTP under /api/v1/faults/...):
 *   POST sleep      {"ms": N}: blocks its worker N ms (0..60000), then answers
 *                   {"instance": ID, "slept": N}
 *   POST hang       defers and never answers (the caller gets 504)
 *   POST badoutput  answers a result that violates its output schema (500)
 *   POST twice      answers twice; the second answer must be refused
 *                   (LOOM_ESTATE), the caller sees the first
 *   POST noreply    returns without answering (500)
 *   POST crash      fails 500 with internal detail the caller must not see
 *   GET  badutf8    answers a string that is not UTF-8 (cannot be encoded: 500)
 *   GET  whoami     {"instance": ID}
 *   GET  echo/:name {"parameter": ..., "payload": ...}: what the handler got
 *   POST echo       the same, for a body
 *   GET  stats      how many times each handler started, and what the second
 *                   answer of `twice` returned
 * Service "ticks" v1: subscription "count" (one per group) on the event
 * "tick"; each event's payload {"seq": N} is appended as a line "N" to the
 * file named by the environment variable FAULT_RECORD (if set), so a test
 * can count deliveries, duplicates included, across restarts.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loom.h"

enum { C_SLEEP, C_HANG, C_BADOUTPUT, C_TWICE, C_NOREPLY, C_CRASH, C_COUNT };
static const char *const names[C_COUNT] = {"sleep", "hang",    "badoutput",
                                           "twice", "noreply", "crash"};
static atomic_long started[C_COUNT];
static atomic_int twice_second = -1; /* loom_err of the second answer */

static void reply(loom_ctx *ctx, cJSON *result)
{
    if (loom_ctx_reply(ctx, result) != LOOM_OK)
        cJSON_Delete(result);
}

static const char *instance_of(const loom_ctx *ctx)
{
    return loom_runtime_instance_id(loom_ctx_runtime(ctx));
}

static void sleep_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started[C_SLEEP], 1);
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(loom_ctx_payload(ctx), "ms");
    long n = cJSON_IsNumber(ms) ? (long)ms->valuedouble : 0;
    if (n < 0 || n > 60000) {
        loom_ctx_fail(ctx, 400, "ms must be 0..60000", NULL);
        return;
    }
    struct timespec ts = {n / 1000, (n % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "slept %ld ms", n);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "instance", instance_of(ctx));
    cJSON_AddNumberToObject(r, "slept", (double)n);
    reply(ctx, r);
}

static void hang_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started[C_HANG], 1);
    if (loom_ctx_defer(ctx) != LOOM_OK)
        loom_ctx_fail(ctx, 500, "cannot defer", NULL);
    /* Never answered: the runtime frees the context when it is destroyed. */
}

static void badoutput_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started[C_BADOUTPUT], 1);
    reply(ctx, cJSON_Parse("{\"unexpected\": true}"));
}

static void twice_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started[C_TWICE], 1);
    cJSON *first = cJSON_Parse("{\"answer\": 1}");
    reply(ctx, first);
    cJSON *second = cJSON_Parse("{\"answer\": 2}");
    loom_err err = loom_ctx_reply(ctx, second);
    if (err != LOOM_OK)
        cJSON_Delete(second);
    atomic_store(&twice_second, (int)err);
}

static void noreply_fn(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&started[C_NOREPLY], 1);
}

static void crash_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&started[C_CRASH], 1);
    cJSON *data = cJSON_Parse("{\"dsn\": \"postgres://admin:hunter2@db/prod\"}");
    if (loom_ctx_fail(ctx, 500, "internal detail: connection to db refused", data) != LOOM_OK)
        cJSON_Delete(data);
}

static void badutf8_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    reply(ctx, cJSON_CreateString("caf\xc3"));
}

static void whoami_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "instance", instance_of(ctx));
    reply(ctx, r);
}

static void echo_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *r = cJSON_CreateObject();
    const cJSON *par = loom_ctx_parameter(ctx), *pay = loom_ctx_payload(ctx);
    cJSON_AddItemToObject(r, "parameter", par ? cJSON_Duplicate(par, true) : cJSON_CreateNull());
    cJSON_AddItemToObject(r, "payload", pay ? cJSON_Duplicate(pay, true) : cJSON_CreateNull());
    reply(ctx, r);
}

static void stats_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *r = cJSON_CreateObject();
    cJSON *s = cJSON_AddObjectToObject(r, "started");
    for (int i = 0; i < C_COUNT; i++)
        cJSON_AddNumberToObject(s, names[i], (double)atomic_load(&started[i]));
    int second = atomic_load(&twice_second);
    if (second >= 0)
        cJSON_AddStringToObject(r, "twiceSecond", loom_strerror((loom_err)second));
    cJSON_AddStringToObject(r, "instance", instance_of(ctx));
    reply(ctx, r);
}

static loom_ack count_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(loom_ctx_payload(ctx), "seq");
    const char *path = getenv("FAULT_RECORD");
    if (!cJSON_IsNumber(seq) || !path || !*path)
        return LOOM_ACK;
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", (long)seq->valuedouble);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return LOOM_RETRY;
    bool ok = write(fd, line, (size_t)n) == n; /* O_APPEND: one line, atomically */
    close(fd);
    return ok ? LOOM_ACK : LOOM_RETRY;
}

static const char sleep_schema[] =
    "{\"type\":\"object\",\"properties\":{\"ms\":{\"type\":\"integer\"}}}";
static const char strict_output[] =
    "{\"type\":\"object\",\"required\":[\"ok\"],\"properties\":{\"ok\":{\"type\":\"boolean\"}},"
    "\"additionalProperties\":false}";

LOOM_COMMAND(cmd_sleep, .name = "sleep", .handler = sleep_fn, .payload_schema = sleep_schema,
             .http_method = "POST", .http_path = "/faults/sleep", .http_public = true);
LOOM_COMMAND(cmd_hang, .name = "hang", .handler = hang_fn, .http_method = "POST",
             .http_path = "/faults/hang", .http_public = true);
LOOM_COMMAND(cmd_badoutput, .name = "badoutput", .handler = badoutput_fn,
             .output_schema = strict_output, .http_method = "POST",
             .http_path = "/faults/badoutput", .http_public = true);
LOOM_COMMAND(cmd_twice, .name = "twice", .handler = twice_fn, .http_method = "POST",
             .http_path = "/faults/twice", .http_public = true);
LOOM_COMMAND(cmd_noreply, .name = "noreply", .handler = noreply_fn, .http_method = "POST",
             .http_path = "/faults/noreply", .http_public = true);
LOOM_COMMAND(cmd_crash, .name = "crash", .handler = crash_fn, .http_method = "POST",
             .http_path = "/faults/crash", .http_public = true);
LOOM_COMMAND(cmd_whoami, .name = "whoami", .handler = whoami_fn, .http_method = "GET",
             .http_path = "/faults/whoami", .http_public = true);
LOOM_COMMAND(cmd_echo, .name = "echo", .handler = echo_fn, .http_method = "GET",
             .http_path = "/faults/echo/:name", .http_public = true);
LOOM_COMMAND(cmd_echo_post, .name = "echopost", .handler = echo_fn, .http_method = "POST",
             .http_path = "/faults/echo", .http_public = true);
LOOM_COMMAND(cmd_badutf8, .name = "badutf8", .handler = badutf8_fn, .http_method = "GET",
             .http_path = "/faults/badutf8", .http_public = true);
LOOM_COMMAND(cmd_stats, .name = "stats", .handler = stats_fn, .http_method = "GET",
             .http_path = "/faults/stats", .http_public = true);
LOOM_SERVICE(faults, .name = "faults", .version = "1",
             .description = "Handlers that misbehave on purpose",
             .commands = LOOM_COMMANDS(&cmd_sleep, &cmd_hang, &cmd_badoutput, &cmd_twice,
                                       &cmd_noreply, &cmd_crash, &cmd_whoami, &cmd_echo,
                                       &cmd_echo_post, &cmd_badutf8, &cmd_stats));

LOOM_SUBSCRIPTION(sub_count, .name = "count", .handler = count_fn, .filter = {.event_name = "tick"},
                  .max_retries = 5);
LOOM_SERVICE(ticks, .name = "ticks", .version = "1", .description = "Counts tick events",
             .subscriptions = LOOM_SUBSCRIPTIONS(&sub_count));

int main(int argc, char **argv)
{
    return loom_main(argc, argv, LOOM_SERVICES(&faults, &ticks));
}
