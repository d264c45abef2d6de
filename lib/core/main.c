/* loom_main: the ready-made main of a service program. Configuration comes
 * from defaults < the program's defaults (loom_main_options) < the YAML file
 * < LOOM_* environment < command-line flags.
 *
 * One-shot runs (--call, --emit) must not answer from a stale copy: with a
 * network broker they run no local service unless --services is on their
 * command line, and --timeout bounds all of it (broker wait included). With
 * the in-memory broker the process is the whole system, so every service
 * runs, and --emit waits for the in-process subscriptions it triggered. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "codec/json.h"
#include "config/config.h"
#include "core/features.h"
#include "core/runtime.h"
#include "core/trust.h"
#include "core/util.h"
#include "http/bridge.h"
#include "loom/http.h"
#include "loom.h"

enum { EXIT_CALL_FAILED = 1, EXIT_USAGE = 2 };

static const char usage_text[] =
    "Usage: %s [options]\n"
    "Runs the linked services until SIGINT/SIGTERM, or makes one call.\n"
    "\n"
    "Options (each overrides the LOOM_* environment variable, which overrides the file):\n"
    "  --config FILE        YAML deployment configuration (LOOM_CONFIG)\n"
    "  --services LIST      services to run here: a,b | all | none (LOOM_SERVICES; default all,\n"
    "                       but none for --call/--emit with a network broker)\n"
    "  --broker URL         memory: | mqtt[s]://HOST:PORT | nats://HOST:PORT[,...] (LOOM_BROKER)\n"
    "  --http HOST:PORT     serve the HTTP bridge (LOOM_HTTP)\n"
    "  --state URL          memory: | file:PATH | redis://HOST:PORT[/DB] (LOOM_STATE)\n"
    "  --instance ID        this instance's id (LOOM_INSTANCE; default random)\n"
    "  --workers N          worker threads (LOOM_WORKERS; default: CPU count)\n"
    "  --log-level L        trace|debug|info|warn|error|off (LOOM_LOG_LEVEL)\n"
    "  --log-format F       text|json (LOOM_LOG_FORMAT)\n"
    "  --set KEY=VALUE      any configuration key, e.g. --set broker.prefix=acme\n"
    "  --help, --version\n"
    "\n"
    "One-shot client:\n"
    "  --call SERVICE.COMMAND [JSON] [--param JSON] [--timeout MS]\n"
    "                       invokes a command, prints the JSON result on stdout and exits 0,\n"
    "                       or prints the error JSON on stderr and exits 1\n"
    "  --emit EVENT [JSON] [--timeout MS]\n"
    "                       publishes an event and exits (in-process subscriptions first)\n"
    "  With a network broker a one-shot runs no local service unless --services is given;\n"
    "  --timeout bounds the whole run, waiting for the broker included.\n"
    "\n"
    "Documents (written without connecting to the broker; FILE - is stdout):\n"
    "  --openapi FILE       the HTTP bridge's OpenAPI 3.1 document (docs/http.md)\n"
    "  --asyncapi FILE      the services' AsyncAPI 3.0 document (channels on the broker)\n"
    "\n"
    "Keys (docs/security.md):\n"
    "  --keygen NAME FILE   writes a new identity's secret key to FILE (mode 0600) and\n"
    "                       prints its keyring line \"NAME PUBLIC-KEY\" on stdout\n";

typedef struct opts {
    const char *call;
    const char *call_payload;
    const char *call_param;
    const char *emit;
    const char *emit_payload;
    long long timeout_ms;
    const char *openapi;  /* --openapi FILE */
    const char *asyncapi; /* --asyncapi FILE */
    bool log_level_set;
    bool services_set; /* --services or --set services=... on the command line */
} opts;

/* Flags that map to one configuration key. */
static const struct {
    const char *flag;
    const char *key;
} flag_keys[] = {
    {"--services", "services"},   {"--broker", "broker.url"},     {"--http", "http.listen"},
    {"--state", "state.url"},     {"--instance", "instance"},     {"--workers", "workers"},
    {"--log-level", "log.level"}, {"--log-format", "log.format"},
};

static bool is_flag(const char *s) { return s && strncmp(s, "--", 2) == 0; }

/* Splits "--flag=value" forms; returns the value or NULL. */
static const char *inline_value(const char *arg, const char *flag)
{
    size_t n = strlen(flag);
    return strncmp(arg, flag, n) == 0 && arg[n] == '=' ? arg + n + 1 : NULL;
}

/* The program's own defaults, under the file: its "key=value" list and
 * the OpenAPI info from its name and version. */
static int apply_program_defaults(const loom_main_options *mo, const char *prog, loom_config *cfg)
{
    if (mo->name && loom_config_set(cfg, "http.openapi.title", mo->name) != LOOM_OK)
        goto bad;
    if (mo->version && loom_config_set(cfg, "http.openapi.version", mo->version) != LOOM_OK)
        goto bad;
    if (mo->description &&
        loom_config_set(cfg, "http.openapi.description", mo->description) != LOOM_OK)
        goto bad;
    for (size_t i = 0; mo->defaults && mo->defaults[i]; i++) {
        const char *kv = mo->defaults[i], *eq = strchr(kv, '=');
        char key[256];
        if (!eq || (size_t)(eq - kv) >= sizeof key) {
            fprintf(stderr, "%s: program default '%s' is not KEY=VALUE\n", prog, kv);
            return EXIT_USAGE;
        }
        memcpy(key, kv, (size_t)(eq - kv));
        key[eq - kv] = '\0';
        if (loom__config_set_from(cfg, "program default", key, eq + 1) != LOOM_OK)
            goto bad;
    }
    return 0;
bad:
    fprintf(stderr, "%s: %s\n", prog, loom_config_error(cfg));
    return EXIT_USAGE;
}

static void print_version(const loom_main_options *mo, const char *prog)
{
    if (mo->version)
        printf("%s %s (loom %s)\n", mo->name ? mo->name : prog, mo->version, loom_version());
    else
        printf("loom %s\n", loom_version());
}

static int parse_args(int argc, char **argv, const char *prog, const loom_main_options *mo,
                      loom_config *cfg, opts *o)
{
    int rc = apply_program_defaults(mo, prog, cfg);
    if (rc != 0)
        return rc;
    /* --config first, so that flags override the file whatever their order. */
    const char *config_path = getenv("LOOM_CONFIG");
    if (config_path && !*config_path)
        config_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *v = inline_value(argv[i], "--config");
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: --config needs a file\n", prog);
                return EXIT_USAGE;
            }
            config_path = argv[++i];
        } else if (v) {
            config_path = v;
        }
    }
    /* The program's default file, only when it exists. */
    if (!config_path && mo->config_file && access(mo->config_file, F_OK) == 0)
        config_path = mo->config_file;
    if (config_path && loom_config_load_file(cfg, config_path) != LOOM_OK) {
        fprintf(stderr, "%s: %s\n", prog, loom_config_error(cfg));
        return EXIT_USAGE;
    }
    if (loom_config_apply_env(cfg) != LOOM_OK) {
        fprintf(stderr, "%s: %s\n", prog, loom_config_error(cfg));
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (mo->description)
                printf("%s\n\n", mo->description);
            printf(usage_text, prog);
            return -1;
        }
        if (strcmp(a, "--version") == 0) {
            print_version(mo, prog);
            return -1;
        }
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (inline_value(a, "--config"))
            continue;
        bool matched = false;
        for (size_t k = 0; k < LOOM__ARRAY_LEN(flag_keys) && !matched; k++) {
            const char *v = inline_value(a, flag_keys[k].flag);
            if (!v && strcmp(a, flag_keys[k].flag) == 0) {
                if (!next) {
                    fprintf(stderr, "%s: %s needs a value\n", prog, a);
                    return EXIT_USAGE;
                }
                v = next;
                i++;
            }
            if (!v)
                continue;
            matched = true;
            if (loom__config_set_from(cfg, flag_keys[k].flag, flag_keys[k].key, v) != LOOM_OK) {
                fprintf(stderr, "%s: %s\n", prog, loom_config_error(cfg));
                return EXIT_USAGE;
            }
            if (strcmp(flag_keys[k].key, "log.level") == 0)
                o->log_level_set = true;
            if (strcmp(flag_keys[k].key, "services") == 0)
                o->services_set = true;
        }
        if (matched)
            continue;
        if (strcmp(a, "--set") == 0 || inline_value(a, "--set")) {
            const char *kv = inline_value(a, "--set");
            if (!kv) {
                kv = next;
                i++;
            }
            const char *eq = kv ? strchr(kv, '=') : NULL;
            if (!eq) {
                fprintf(stderr, "%s: --set needs KEY=VALUE\n", prog);
                return EXIT_USAGE;
            }
            char key[256];
            size_t klen = (size_t)(eq - kv) < sizeof key - 1 ? (size_t)(eq - kv) : sizeof key - 1;
            memcpy(key, kv, klen);
            key[klen] = '\0';
            if (loom__config_set_from(cfg, "--set", key, eq + 1) != LOOM_OK) {
                fprintf(stderr, "%s: %s\n", prog, loom_config_error(cfg));
                return EXIT_USAGE;
            }
            o->services_set = o->services_set || strcmp(key, "services") == 0;
            o->log_level_set = o->log_level_set || strcmp(key, "log.level") == 0;
            continue;
        }
        if (strcmp(a, "--call") == 0) {
            if (!next || is_flag(next)) {
                fprintf(stderr, "%s: --call needs SERVICE.COMMAND\n", prog);
                return EXIT_USAGE;
            }
            o->call = argv[++i];
            if (i + 1 < argc && !is_flag(argv[i + 1]))
                o->call_payload = argv[++i];
            continue;
        }
        if (strcmp(a, "--param") == 0) {
            if (!next) {
                fprintf(stderr, "%s: --param needs a JSON object\n", prog);
                return EXIT_USAGE;
            }
            o->call_param = argv[++i];
            continue;
        }
        if (strcmp(a, "--timeout") == 0) {
            if (!next || !loom__parse_int(next, 1, 86400000, &o->timeout_ms)) {
                fprintf(stderr, "%s: --timeout needs milliseconds (1..86400000)\n", prog);
                return EXIT_USAGE;
            }
            i++;
            continue;
        }
        if (strcmp(a, "--openapi") == 0 || strcmp(a, "--asyncapi") == 0) {
            if (!next) {
                fprintf(stderr, "%s: %s needs a file (- for stdout)\n", prog, a);
                return EXIT_USAGE;
            }
            *(a[2] == 'o' ? &o->openapi : &o->asyncapi) = argv[++i];
            continue;
        }
        if (strcmp(a, "--emit") == 0) {
            if (!next || is_flag(next)) {
                fprintf(stderr, "%s: --emit needs an event name\n", prog);
                return EXIT_USAGE;
            }
            o->emit = argv[++i];
            if (i + 1 < argc && !is_flag(argv[i + 1]))
                o->emit_payload = argv[++i];
            continue;
        }
        fprintf(stderr, "%s: unknown argument '%s' (see --help)\n", prog, a);
        return EXIT_USAGE;
    }
    if ((o->openapi || o->asyncapi) && (o->call || o->emit)) {
        fprintf(stderr, "%s: --openapi and --asyncapi cannot be combined with --call or --emit\n",
                prog);
        return EXIT_USAGE;
    }
    if (o->call && o->emit) {
        fprintf(stderr, "%s: --call and --emit cannot be combined\n", prog);
        return EXIT_USAGE;
    }
    if (o->call_param && !o->call) {
        fprintf(stderr, "%s: --param goes with --call\n", prog);
        return EXIT_USAGE;
    }
    if (o->timeout_ms && !o->call && !o->emit) {
        fprintf(stderr, "%s: --timeout goes with --call or --emit\n", prog);
        return EXIT_USAGE;
    }
    return 0;
}

/* Adds the services selected by the `services` key. */
static int add_selected(loom_runtime *rt, const loom_config *cfg,
                        const loom_service_def *const *services, void *const *users,
                        const char *prog)
{
    const cJSON *sel = loom_config_get(cfg, "services");
    bool all = !sel || cJSON_GetArraySize(sel) == 0;
    bool none = false;
    const cJSON *it;
    cJSON_ArrayForEach(it, sel)
    {
        if (!cJSON_IsString(it))
            continue;
        if (strcmp(it->valuestring, "all") == 0)
            all = true;
        else if (strcmp(it->valuestring, "none") == 0)
            none = true;
        else {
            bool known = false;
            for (size_t i = 0; services && services[i] && !known; i++)
                known = strcmp(services[i]->name, it->valuestring) == 0;
            if (!known) {
                fprintf(stderr, "%s: services: unknown service '%s' (linked:", prog,
                        it->valuestring);
                for (size_t i = 0; services && services[i]; i++)
                    fprintf(stderr, " %s", services[i]->name);
                fprintf(stderr, ")\n");
                return EXIT_USAGE;
            }
        }
    }
    if (none && (all || cJSON_GetArraySize(sel) > 1)) {
        fprintf(stderr, "%s: services: 'none' cannot be combined with other names\n", prog);
        return EXIT_USAGE;
    }
    for (size_t i = 0; !none && services && services[i]; i++) {
        bool wanted = all;
        cJSON_ArrayForEach(it, sel) if (cJSON_IsString(it) &&
                                        strcmp(it->valuestring, services[i]->name) == 0) wanted =
            true;
        if (!wanted)
            continue;
        loom_err err = loom_runtime_add_service(rt, services[i], users ? users[i] : NULL);
        if (err != LOOM_OK) {
            fprintf(stderr, "%s: cannot add service %s: %s\n", prog, services[i]->name,
                    loom_strerror(err));
            return EXIT_USAGE;
        }
    }
    return 0;
}

static cJSON *parse_json_arg(const char *prog, const char *what, const char *text)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(text, &end, true);
    if (!j)
        fprintf(stderr, "%s: %s is not valid JSON (near byte %ld)\n", prog, what,
                end ? (long)(end - text) : 0L);
    return j;
}

static int run_call(loom_runtime *rt, const opts *o, uint32_t timeout_ms, const char *prog)
{
    const char *dot = strrchr(o->call, '.');
    if (!dot || dot == o->call || !dot[1]) {
        fprintf(stderr, "%s: --call needs SERVICE.COMMAND, got '%s'\n", prog, o->call);
        return EXIT_USAGE;
    }
    char service[256];
    size_t n = (size_t)(dot - o->call);
    if (n >= sizeof service) {
        fprintf(stderr, "%s: service name too long\n", prog);
        return EXIT_USAGE;
    }
    memcpy(service, o->call, n);
    service[n] = '\0';
    cJSON *payload = NULL, *param = NULL;
    if (o->call_payload && !(payload = parse_json_arg(prog, "the payload", o->call_payload)))
        return EXIT_USAGE;
    if (o->call_param) {
        param = parse_json_arg(prog, "--param", o->call_param);
        if (!param || !cJSON_IsObject(param)) {
            if (param)
                fprintf(stderr, "%s: --param must be a JSON object\n", prog);
            cJSON_Delete(payload);
            cJSON_Delete(param);
            return EXIT_USAGE;
        }
    }
    loom_call call = LOOM_CALL_INIT(.service = service, .command = dot + 1, .payload = payload,
                                    .parameter = param, .timeout_ms = timeout_ms);
    loom_msg *resp = NULL;
    loom_err err = loom_runtime_call(rt, &call, &resp);
    if (err != LOOM_OK) {
        cJSON_Delete(payload);
        cJSON_Delete(param);
        fprintf(stderr, "%s: call failed: %s\n", prog, loom_strerror(err));
        return EXIT_CALL_FAILED;
    }
    int status = loom_msg_status(resp);
    cJSON *body = loom_msg_result_json(resp);
    char *text = body ? loom__json_print(body, NULL) : NULL;
    if (status < 300) {
        if (text)
            printf("%s\n", text);
    } else {
        fprintf(stderr, "%s\n", text ? text : "{}");
    }
    fflush(stdout);
    free(text);
    cJSON_Delete(body);
    loom_msg_release(resp);
    return status < 300 ? 0 : EXIT_CALL_FAILED;
}

static int run_emit(loom_runtime *rt, const opts *o, int64_t deadline, const char *prog)
{
    cJSON *payload = NULL;
    if (o->emit_payload && !(payload = parse_json_arg(prog, "the event payload", o->emit_payload)))
        return EXIT_USAGE;
    loom_err err = loom_runtime_emit(rt, o->emit, payload);
    if (err != LOOM_OK) {
        cJSON_Delete(payload);
        fprintf(stderr, "%s: emit failed: %s\n", prog, loom_strerror(err));
        return EXIT_CALL_FAILED;
    }
    /* The in-process subscriptions it reached (and what they emitted). */
    int64_t left = deadline - loom__mono_ms();
    if (loom_runtime_wait_events(rt, left > 0 ? (uint32_t)left : 0) != LOOM_OK) {
        fprintf(stderr, "%s: the subscriptions did not finish within the timeout\n", prog);
        return EXIT_CALL_FAILED;
    }
    return 0;
}

/* --keygen NAME FILE: a new identity (the secret never goes to stdout). */
static int run_keygen(int argc, char **argv, const char *prog)
{
    /* Whatever follows is ignored: wrappers (the shop) append their flags. */
    if (argc < 4 || is_flag(argv[2]) || is_flag(argv[3])) {
        fprintf(stderr, "%s: --keygen needs NAME and FILE\n", prog);
        return EXIT_USAGE;
    }
    char line[256];
    loom_err err = loom__trust_keygen(argv[2], argv[3], line, sizeof line);
    if (err != LOOM_OK) {
        fprintf(stderr, "%s: --keygen %s %s: %s\n", prog, argv[2], argv[3],
                err == LOOM_EINVAL ? "NAME must be 1 to 63 of [A-Za-z0-9_.-]" : loom_strerror(err));
        return EXIT_USAGE;
    }
    printf("%s\n", line);
    return 0;
}

/* Waits for the broker within the one-shot's deadline, then makes the
 * call or the emit with the time that is left. */
static int run_oneshot(loom_runtime *rt, const opts *o, const char *prog)
{
    /* Without --timeout: the call's own timeout, after at most 10 s of
     * waiting for the broker; subscriptions get the drain time. */
    int64_t start = loom__mono_ms();
    uint32_t wait = o->timeout_ms ? (uint32_t)o->timeout_ms : 10000;
    int64_t deadline = start + (o->timeout_ms ? o->timeout_ms : 10000 + rt->drain_timeout_ms);
    if (loom_runtime_wait_ready(rt, wait) != LOOM_OK) {
        if (atomic_load(&rt->broker_state) != LOOM_BROKER_CONNECTED) {
            fprintf(stderr, "%s: cannot reach the broker %s within %u ms\n", prog, rt->broker_url,
                    wait);
            return EXIT_CALL_FAILED;
        }
        fprintf(stderr, "%s: warning: the broker is not ready after %u ms\n", prog, wait);
    }
    if (o->emit)
        return run_emit(rt, o, deadline, prog);
    uint32_t timeout = 0; /* the command's own */
    if (o->timeout_ms) {
        int64_t left = start + o->timeout_ms - loom__mono_ms();
        timeout = left > 0 ? (uint32_t)left : 1;
    }
    int rc = run_call(rt, o, timeout, prog);
    /* The in-process subscriptions the command's events reached: within
     * --timeout, else the drain time. */
    int64_t left = o->timeout_ms ? deadline - loom__mono_ms() : (int64_t)rt->drain_timeout_ms;
    if (loom_runtime_wait_events(rt, left > 0 ? (uint32_t)left : 0) != LOOM_OK)
        fprintf(stderr, "%s: warning: subscriptions still busy at exit\n", prog);
    return rc;
}

static bool is_memory_broker(const loom_config *cfg)
{
    return strncasecmp(loom__config_str(cfg, "broker.url", "memory:"), "memory:", 7) == 0;
}

/* Writes doc to path ("-": stdout); 0 or EXIT_CALL_FAILED. Takes doc. */
static int write_document(cJSON *doc, const char *path, const char *what, const char *prog)
{
    char *text = doc ? cJSON_PrintUnformatted(doc) : NULL;
    cJSON_Delete(doc);
    if (!text) {
        fprintf(stderr, "%s: cannot build the %s document: out of memory\n", prog, what);
        return EXIT_CALL_FAILED;
    }
    bool to_stdout = strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    ok = (to_stdout ? fflush(f) == 0 : f && fclose(f) == 0) && ok;
    free(text);
    if (!ok) {
        fprintf(stderr, "%s: cannot write the %s document to %s\n", prog, what, path);
        return EXIT_CALL_FAILED;
    }
    return 0;
}

/* --openapi, --asyncapi: the documents of the selected services, as the
 * bridge would serve them, from the definitions alone (the runtime is not
 * started). */
static int run_documents(loom_runtime *rt, loom_config *cfg, const opts *o, const char *prog)
{
    loom_http *http = NULL;
    loom_err err = loom_http_create(&http, rt, cfg);
    if (err != LOOM_OK) {
        fprintf(stderr, "%s: cannot set up the HTTP bridge: %s\n", prog, loom_strerror(err));
        return EXIT_USAGE;
    }
    int rc = 0;
    if (o->openapi)
        rc = write_document(loom__http_openapi_doc(http), o->openapi, "OpenAPI", prog);
    if (o->asyncapi && rc == 0)
        rc = write_document(loom__http_asyncapi_doc(http), o->asyncapi, "AsyncAPI", prog);
    loom_http_destroy(http);
    return rc;
}

/* Creates the runtime and the bridge, adds the selected services. */
static int setup(loom_runtime **rt, loom_http **http, loom_config *cfg, const opts *o,
                 const loom_service_def *const *services, const loom_main_options *mo,
                 const char *prog)
{
    bool oneshot = o->call || o->emit;
    loom_runtime_config rc_cfg = LOOM_RUNTIME_CONFIG_INIT(.config = cfg);
    loom_err err = loom_runtime_create(rt, &rc_cfg);
    if (err != LOOM_OK) {
        fprintf(stderr, "%s: cannot create the runtime: %s\n", prog, loom_strerror(err));
        return err == LOOM_ECONFIG || err == LOOM_EUNSUPPORTED ? EXIT_USAGE : EXIT_CALL_FAILED;
    }
    /* A one-shot over a network broker asks the running instances; its own
     * copies (with their own, likely empty, state) would answer instead. */
    bool local = !oneshot || o->services_set || is_memory_broker(cfg);
    int rc = local ? add_selected(*rt, cfg, services, mo->users, prog) : 0;
    if (rc != 0)
        return rc;
    const char *listen = loom__config_str(cfg, "http.listen", NULL);
    if (o->openapi || o->asyncapi)
        return run_documents(*rt, cfg, o, prog);
    if (listen && !oneshot && (err = loom_http_create(http, *rt, cfg)) != LOOM_OK) {
        const char *without = loom__built_without_http();
        fprintf(stderr, "%s: cannot create the HTTP bridge on %s: %s\n", prog, listen,
                without ? without : loom_strerror(err));
        return EXIT_USAGE;
    }
    return 0;
}

int loom_main_with(int argc, char **argv, const loom_service_def *const *services,
                   const loom_main_options *mo)
{
    static const loom_main_options no_options = LOOM_MAIN_OPTIONS_INIT();
    if (!mo)
        mo = &no_options;
    if (LOOM__STRUCT_CHECK(mo, LOOM__V0_MAIN_OPTIONS) != LOOM_OK) {
        fprintf(stderr, "loom_main_with: bad loom_main_options.size (initialise it with "
                        "LOOM_MAIN_OPTIONS_INIT, built against this loom)\n");
        return EXIT_USAGE;
    }
    const char *prog = argc > 0 && argv[0] ? argv[0] : "loom";
    const char *slash = strrchr(prog, '/');
    if (slash)
        prog = slash + 1;
    if (argc >= 2 && strcmp(argv[1], "--keygen") == 0)
        return run_keygen(argc, argv, prog);
    loom_config *cfg = NULL;
    if (loom_config_create(&cfg) != LOOM_OK) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_CALL_FAILED;
    }
    opts o = {0};
    int rc = parse_args(argc, argv, prog, mo, cfg, &o);
    if (rc != 0) {
        loom_config_destroy(cfg);
        return rc < 0 ? 0 : rc;
    }
    bool oneshot = o.call || o.emit;
    /* One-shot commands keep stderr for their answer unless asked. */
    if (oneshot && !o.log_level_set && !loom_config_get(cfg, "log.level"))
        loom_config_set(cfg, "log.level", "warn");

    /* Signals are taken by sigwait in this thread only. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    signal(SIGPIPE, SIG_IGN);

    loom_runtime *rt = NULL;
    loom_http *http = NULL;
    loom_err err;
    if ((rc = setup(&rt, &http, cfg, &o, services, mo, prog)) != 0 || o.openapi || o.asyncapi)
        goto out;
    if ((err = loom_runtime_start(rt)) != LOOM_OK) {
        fprintf(stderr, "%s: cannot start: %s\n", prog, loom_strerror(err));
        rc = EXIT_CALL_FAILED;
        goto out;
    }
    if (oneshot) {
        rc = run_oneshot(rt, &o, prog);
        goto out;
    }
    if (http && (err = loom_http_start(http)) != LOOM_OK) {
        fprintf(stderr, "%s: cannot start the HTTP bridge on %s: %s\n", prog,
                loom__config_str(cfg, "http.listen", ""), loom_strerror(err));
        rc = EXIT_CALL_FAILED;
        goto out;
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    loom_runtime_log(rt, LOOM_LOG_INFO, "received %s, shutting down",
                     sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
out:
    /* The bridge first: it answers its suspended requests, then the runtime
     * drains. */
    loom_http_destroy(http);
    loom_runtime_destroy(rt);
    loom_config_destroy(cfg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int loom_main(int argc, char **argv, const loom_service_def *const *services)
{
    return loom_main_with(argc, argv, services, NULL);
}
