/* An HTTP service with many routes, for the cost-growth benchmarks.
 *
 *   bench_routes [--routes N] [loom_main flags: --http HOST:PORT --state memory: ...]
 *
 * One service "routes" version 1 with N generated commands r0 .. r{N-1},
 * each GET {base}/v1/r{i}/:id answering {"ok":true} (wrk asks for the last
 * one, so the lookup has the most routes to get past), and
 * POST {base}/v1/echo answering {"n":<payload.n + 1>,"bytes":<pad length>}
 * for the payload-size runs. Everything else is loom_main(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom.h"

static void route_handler(loom_ctx *ctx, void *user)
{
    (void)user;
    cJSON *out = cJSON_CreateObject();
    if (!out || !cJSON_AddTrueToObject(out, "ok") || loom_ctx_reply(ctx, out) != LOOM_OK)
        cJSON_Delete(out);
}

static void echo_handler(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *p = loom_ctx_payload(ctx);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(p, "n");
    const char *pad = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "pad"));
    cJSON *out = cJSON_CreateObject();
    if (!out || !cJSON_AddNumberToObject(out, "n", cJSON_IsNumber(n) ? n->valuedouble + 1 : 0) ||
        !cJSON_AddNumberToObject(out, "bytes", pad ? (double)strlen(pad) : 0) ||
        loom_ctx_reply(ctx, out) != LOOM_OK)
        cJSON_Delete(out);
}

LOOM_COMMAND(echo_cmd, .name = "echo", .handler = echo_handler, .http_method = "POST",
             .http_path = "/echo", .http_public = true);

int main(int argc, char **argv)
{
    long n = 1;
    /* --routes N is ours; everything else goes to loom_main. */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (!args)
        return 1;
    int nargs = 0;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && strcmp(argv[i], "--routes") == 0 && i + 1 < argc) {
            n = atol(argv[++i]);
            continue;
        }
        args[nargs++] = argv[i];
    }
    if (n < 1 || n > 100000) {
        fprintf(stderr, "bench_routes: --routes must be 1..100000\n");
        free(args);
        return 2;
    }
    /* The descriptors must outlive the runtime: they live until exit. */
    loom_command_def *defs = calloc((size_t)n, sizeof *defs);
    const loom_command_def **cmds = calloc((size_t)n + 2, sizeof *cmds);
    /* i < 100000: "r99999" and "/r99999/:id" fit */
    char *names = calloc((size_t)n, 16), *paths = calloc((size_t)n, 24);
    if (!defs || !cmds || !names || !paths) {
        fprintf(stderr, "bench_routes: out of memory\n");
        return 1;
    }
    for (int i = 0; i < (int)n; i++) {
        char *name = names + (size_t)i * 16, *path = paths + (size_t)i * 24;
        snprintf(name, 16, "r%d", i % 100000);
        snprintf(path, 24, "/r%d/:id", i % 100000);
        defs[i] = (loom_command_def)LOOM_COMMAND_DEF_INIT(.name = name, .handler = route_handler,
                                                          .http_method = "GET", .http_path = path,
                                                          .http_public = true);
        cmds[i] = &defs[i];
    }
    cmds[n] = &echo_cmd;
    cmds[n + 1] = NULL;
    const loom_service_def svc =
        LOOM_SERVICE_DEF_INIT(.name = "routes", .version = "1", .commands = cmds);
    int rc = loom_main(nargs, args, LOOM_SERVICES(&svc));
    free(defs);
    free(cmds);
    free(names);
    free(paths);
    free(args);
    return rc;
}
