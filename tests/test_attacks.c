/* Attacks on a loom deployment through the broker (docs/security.md,
 * "Attacks and results"): each test runs one attack and checks that it
 * fails and that the system keeps serving.
 *
 * Three groups:
 *  - "signing": loom runtimes in this process over a stock mosquitto (no
 *    ACL: anyone may publish anything), with security.signing on and keys
 *    made here (identities probe, caller, mallory). Shows what signatures
 *    alone stop: forged identities, forged replies, replays, forged and
 *    oversized announcements, and an instance restoring its cleared
 *    announcement.
 *  - "split": the shop split as examples/shop/deploy/secure.sh deploys it
 *    (mosquitto with passwords, the generated ACL keyed on user names,
 *    use_username_as_clientid, signing on, the bridge's auth on), attacked
 *    with mosquitto_pub / mosquitto_sub / mosquitto_rr as the user mallory,
 *    who holds the credentials of another service (reviews).
 *  - "split_nats": the same deployment over nats-server with secure.sh's
 *    users and subject permissions, attacked with nats.c connections, one
 *    test per attack.
 *
 * Every wait is bounded; a failed test's processes are reaped by the
 * teardown. The shop binary is found under $LOOM_TEST_BUILD (default ".").
 *
 *   T_FILTER=pattern   runs only the tests whose name matches
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <nats/nats.h>

#include "core/runtime.h"
#include "core/trust.h"
#include "core/util.h"
#include "support/mosquitto.h"
#include "support/nats.h"
#include "support/proc.h"
#include "support/support.h"

#define WAIT_MS 5000

#define WAIT_UNTIL(cond, what)                                                                     \
    do {                                                                                           \
        int64_t until_ = t_mono_ms() + WAIT_MS;                                                    \
        while (!(cond)) {                                                                          \
            if (t_mono_ms() > until_)                                                              \
                fail_msg("timed out waiting for %s", what);                                        \
            t_sleep_ms(20);                                                                        \
        }                                                                                          \
    } while (0)

static char shop_path[512];
static char tools[3][512]; /* mosquitto_pub, mosquitto_sub, mosquitto_rr */
enum { PUB, SUB, RR };

static const char *tool(int which)
{
    static const char *const names[] = {"mosquitto_pub", "mosquitto_sub", "mosquitto_rr"};
    if (!tools[which][0]) {
        const char *const none[] = {NULL};
        if (!t_find_program(names[which], none, tools[which], sizeof tools[which]))
            fail_msg("%s is not installed (mosquitto-clients)", names[which]);
    }
    return tools[which];
}

static uint64_t dropped(loom_runtime *rt, int reason)
{
    return atomic_load(&rt->trust.dropped[reason]);
}

/* Runs a mosquitto client to completion; returns its exit status and
 * leaves its output in out (optional, free() it). */
static int run_tool(int which, const char *const *args, int timeout_ms, char **out)
{
    t_run r;
    t_run_prog(&r, tool(which), args, NULL, timeout_ms);
    int status = r.status;
    if (out)
        *out = strdup(t_run_out(&r));
    t_run_free(&r);
    return status;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len)
        fail_msg("cannot write %s", path);
    fclose(f);
}

/* ========================================================================= */
/* Group "signing": runtimes over a stock broker                             */

static struct {
    char dir[128];
    t_broker broker;
    loom_runtime *probe, *caller, *mallory;
    atomic_int echo_calls;
    atomic_bool echo_verified;
    char echo_principal[64], echo_signer[64];
} S;

static void echo_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    const loom_msg *m = loom_ctx_msg(ctx);
    const char *p = loom_msg_principal_id(m), *s = loom_msg_signer(m);
    snprintf(S.echo_principal, sizeof S.echo_principal, "%s", p ? p : "");
    snprintf(S.echo_signer, sizeof S.echo_signer, "%s", s ? s : "");
    atomic_store(&S.echo_verified, loom_msg_identity_verified(m));
    atomic_fetch_add(&S.echo_calls, 1);
    loom_ctx_reply(ctx, cJSON_CreateObject());
}

static char slow_id[33]; /* the id of the slow command running */

static void slow_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    snprintf(slow_id, sizeof slow_id, "%s", loom_msg_id(loom_ctx_msg(ctx)));
    t_sleep_ms(1500); /* long enough for the forged answers to arrive first */
    cJSON *r = cJSON_CreateObject();
    cJSON_AddTrueToObject(r, "real");
    loom_ctx_reply(ctx, r);
}

LOOM_COMMAND(echo_cmd, .name = "echo", .handler = echo_fn, .http_method = "POST",
             .http_path = "/echo");
LOOM_COMMAND(slow_cmd, .name = "slow", .handler = slow_fn);
LOOM_SERVICE(probe_svc, .name = "probe", .version = "1",
             .commands = LOOM_COMMANDS(&echo_cmd, &slow_cmd));

/* A second service of the probe's process with a command of the same name:
 * what a re-targeted probe.echo would run. */
static atomic_int other_calls;
static void other_fn(loom_ctx *ctx, void *user)
{
    (void)user;
    atomic_fetch_add(&other_calls, 1);
    loom_ctx_reply(ctx, cJSON_CreateObject());
}
LOOM_COMMAND(other_echo_cmd, .name = "echo", .handler = other_fn);
LOOM_SERVICE(other_svc, .name = "other", .version = "1",
             .commands = LOOM_COMMANDS(&other_echo_cmd));

/* A subscriber to probe's events only. */
static atomic_int probe_events;
static loom_ack on_probe_event(loom_ctx *ctx, void *user)
{
    (void)ctx;
    (void)user;
    atomic_fetch_add(&probe_events, 1);
    return LOOM_ACK;
}
LOOM_SUBSCRIPTION(probe_event_sub, .name = "fromProbe", .handler = on_probe_event,
                  .filter = {.event_name = "probeEvent", .sender_service = "probe"});
LOOM_SERVICE(watch_svc, .name = "watch", .version = "1",
             .subscriptions = LOOM_SUBSCRIPTIONS(&probe_event_sub));

/* mallory's fake probe: the same service name, a public route of its own. */
LOOM_COMMAND(fake_cmd, .name = "charge", .handler = echo_fn, .http_method = "POST",
             .http_path = "/charge", .http_public = true);
LOOM_SERVICE(fake_probe_svc, .name = "probe", .version = "1",
             .commands = LOOM_COMMANDS(&echo_cmd, &fake_cmd));

static void make_identity(const char *name, const char *services, FILE *ring)
{
    char key[256], line[256];
    snprintf(key, sizeof key, "%s/%s.key", S.dir, name);
    assert_int_equal(loom__trust_keygen(name, key, line, sizeof line), LOOM_OK);
    fprintf(ring, "%s %s\n", line, services);
}

static loom_runtime *rt_new(const char *identity, const char *instance, const char *extra_key,
                            const char *extra_value)
{
    loom_config *cfg;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    char key[256], ring[256];
    snprintf(key, sizeof key, "%s/%s.key", S.dir, identity);
    snprintf(ring, sizeof ring, "%s/keyring", S.dir);
    assert_int_equal(loom_config_set(cfg, "broker.url", t_broker_url(&S.broker)), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.signing", "true"), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.key_file", key), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.keyring", ring), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "timeouts.default_ms", "4000"), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "log.level", "error"), LOOM_OK);
    if (extra_key)
        assert_int_equal(loom_config_set(cfg, extra_key, extra_value), LOOM_OK);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .instance_id = instance, .workers = 2);
    loom_runtime *rt;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    return rt;
}

static void rt_go(loom_runtime *rt)
{
    assert_int_equal(loom_runtime_start(rt), LOOM_OK);
    assert_int_equal(loom_runtime_wait_ready(rt, WAIT_MS), LOOM_OK);
}

static int signing_setup(void **state)
{
    (void)state;
    memset(&S, 0, sizeof S);
    snprintf(S.dir, sizeof S.dir, "/tmp/loom-attacks-XXXXXX");
    if (!mkdtemp(S.dir))
        return -1;
    char path[256];
    snprintf(path, sizeof path, "%s/keyring", S.dir);
    FILE *ring = fopen(path, "w");
    if (!ring)
        return -1;
    make_identity("probe", "probe other", ring);
    make_identity("caller", "-", ring);
    make_identity("mallory", "mallory", ring);
    fclose(ring);
    t_broker_start(&S.broker);
    S.probe = rt_new("probe", "probe-1", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(S.probe, &probe_svc, NULL), LOOM_OK);
    assert_int_equal(loom_runtime_add_service(S.probe, &other_svc, NULL), LOOM_OK);
    rt_go(S.probe);
    S.caller = rt_new("caller", "caller-1", NULL, NULL);
    rt_go(S.caller);
    /* mallory: keys and a runtime, but no services (tests add their own). */
    S.mallory = rt_new("mallory", "mallory-1", NULL, NULL);
    rt_go(S.mallory);
    WAIT_UNTIL(loom__remote_has_command(S.caller, "probe", "1", "echo"), "probe's announcement");
    return 0;
}

static int signing_teardown(void **state)
{
    (void)state;
    loom_runtime_destroy(S.caller);
    loom_runtime_destroy(S.probe);
    loom_runtime_destroy(S.mallory);
    t_broker_stop(&S.broker);
    t_proc_reap_all(2000);
    t_remove_tree(S.dir);
    return 0;
}

static loom_msg *call_echo(const char *principal, const char *tenant)
{
    loom_call c = LOOM_CALL_INIT(.service = "probe", .command = "echo", .principal_id = principal,
                                 .tenant_id = tenant, .payload = cJSON_CreateObject());
    loom_msg *resp = NULL;
    assert_int_equal(loom_runtime_call(S.caller, &c, &resp), LOOM_OK);
    return resp;
}

/* Publishes the file at path with mosquitto_pub (MQTT 5) on topic. */
static void publish_file(const char *topic, const char *path, bool retain)
{
    char port[16];
    snprintf(port, sizeof port, "%d", S.broker.port);
    const char *args[] = {"-V",  "5",  "-h", "127.0.0.1",          "-p", port, "-q", "1", "-t",
                          topic, "-f", path, retain ? "-r" : NULL, NULL};
    assert_int_equal(run_tool(PUB, args, 5000, NULL), 0);
}

/* Publishes bytes with mosquitto_pub (MQTT 5) on topic. */
static void publish_bytes(const char *topic, const void *data, size_t len, bool retain)
{
    char path[256];
    snprintf(path, sizeof path, "%s/payload", S.dir);
    write_file(path, data, len);
    publish_file(topic, path, retain);
}

/* A command envelope for probe.echo claiming principal admin, tenant acme-corp. */
static loom_msg *forged_command(const char *sender_service)
{
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    assert_non_null(m);
    assert_int_equal(loom__msg_set(m, &m->principal_id, "admin"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->tenant_id, "acme-corp"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->reply_to, "loom/reply/mallory-1"), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->sender, sender_service,
                                           sender_service ? "1" : NULL, NULL, "mallory-1"),
                     LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "probe", "1", "echo", NULL), LOOM_OK);
    m->payload = cJSON_CreateObject();
    m->deadline = m->timestamp + 4000;
    return m;
}

/* Encodes m (consumed), signs it with mallory's key as mallory's runtime
 * would, and publishes it on topic. */
static void publish_signed_by_mallory(loom_msg *m, const char *topic)
{
    char *data;
    size_t len;
    assert_int_equal(loom_msg_encode(m, &data, &len), LOOM_OK);
    assert_int_equal(loom__trust_sign(&S.mallory->trust, m, false, &data, &len), LOOM_OK);
    publish_bytes(topic, data, len, false);
    loom_free(data);
    loom_msg_release(m);
}

static char logged[4096];

static void capture_log(const loom_log_record *rec, void *user)
{
    (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", rec->message);
}

static loom_err create_with(const char *key_file, const char *ring_file)
{
    loom_config *cfg;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.signing", "on"), LOOM_OK);
    if (key_file)
        assert_int_equal(loom_config_set(cfg, "security.key_file", key_file), LOOM_OK);
    if (ring_file)
        assert_int_equal(loom_config_set(cfg, "security.keyring", ring_file), LOOM_OK);
    logged[0] = '\0';
    loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .log_fn = capture_log);
    loom_runtime *rt = NULL;
    loom_err err = loom_runtime_create(&rt, &rc);
    loom_runtime_destroy(rt);
    loom_config_destroy(cfg);
    return err;
}

/* Signing on without usable keys is a configuration error that names the
 * file (and line) and never prints a key. */
static void test_signing_configuration_errors(void **state)
{
    (void)state;
    char key[256], ring[256], bad[256];
    snprintf(key, sizeof key, "%s/probe.key", S.dir);
    snprintf(ring, sizeof ring, "%s/keyring", S.dir);
    snprintf(bad, sizeof bad, "%s/bad", S.dir);
    assert_int_equal(create_with(NULL, NULL), LOOM_ECONFIG);
    assert_non_null(strstr(logged, "security.key_file"));
    assert_int_equal(create_with(bad, ring), LOOM_ECONFIG);
    assert_non_null(strstr(logged, "cannot read"));
    char *secret = t_read_file(key);
    secret[strcspn(secret, "\n")] = '\0';
    char *b64 = strchr(secret, ' ') + 1;
    /* a secret key file others may read is refused, whatever it holds */
    write_file(bad, secret, strlen(secret));
    assert_int_equal(chmod(bad, 0640), 0);
    assert_int_equal(create_with(bad, ring), LOOM_ECONFIG);
    assert_non_null(strstr(logged, "accessible by others (mode 0640)"));
    assert_non_null(strstr(logged, "chmod 600"));
    assert_null(strstr(logged, b64));
    write_file(bad, "probe not-base64!\n", 18);
    assert_int_equal(chmod(bad, 0600), 0);
    assert_int_equal(create_with(bad, ring), LOOM_ECONFIG);
    assert_non_null(strstr(logged, "expected \"NAME BASE64-SECRET-KEY\""));
    static const char lines[] = "# comment\ncaller AAAA -\n";
    write_file(bad, lines, sizeof lines - 1);
    assert_int_equal(create_with(key, bad), LOOM_ECONFIG);
    char where[300];
    snprintf(where, sizeof where, "%s:2:", bad);
    assert_non_null(strstr(logged, where));
    /* a keyring without this process's own identity */
    char *all = t_read_file(ring);
    char *caller_line = strstr(all, "caller ");
    write_file(bad, caller_line, strlen(caller_line));
    free(all);
    assert_int_equal(create_with(key, bad), LOOM_ECONFIG);
    assert_non_null(strstr(logged, "does not list this process's identity 'probe'"));
    assert_int_equal(create_with(key, ring), LOOM_OK);
    assert_null(strstr(logged, b64));
    /* the key from the environment instead of a file */
    char *text = t_read_file(key);
    setenv("LOOM_TEST_ATTACKS_KEY", text, 1);
    free(text);
    loom_config *cfg;
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.signing", "on"), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.key_env", "LOOM_TEST_ATTACKS_KEY"), LOOM_OK);
    assert_int_equal(loom_config_set(cfg, "security.keyring", ring), LOOM_OK);
    loom_runtime_config rc = LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .log_fn = capture_log);
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    assert_string_equal(rt->trust.name, "probe");
    loom_runtime_destroy(rt);
    loom_config_destroy(cfg);
    unsetenv("LOOM_TEST_ATTACKS_KEY");
    free(secret);
}

/* A signed call carries a verified identity to the handler. */
static void test_signed_call_carries_verified_identity(void **state)
{
    (void)state;
    int before = atomic_load(&S.echo_calls);
    loom_msg *resp = call_echo("alice", "t-1");
    assert_int_equal(loom_msg_status(resp), 200);
    assert_true(loom_msg_identity_verified(resp));
    assert_string_equal(loom_msg_signer(resp), "probe");
    loom_msg_release(resp);
    assert_int_equal(atomic_load(&S.echo_calls), before + 1);
    assert_true(atomic_load(&S.echo_verified));
    assert_string_equal(S.echo_principal, "alice");
    assert_string_equal(S.echo_signer, "caller");
}

/* Attack: an unsigned envelope with principalId admin / tenantId acme-corp. */
static void test_forged_principal_unsigned_is_dropped(void **state)
{
    (void)state;
    int before = atomic_load(&S.echo_calls);
    uint64_t d0 = dropped(S.probe, LOOM__DROP_UNSIGNED);
    loom_msg *m = forged_command(NULL);
    char *data;
    size_t len;
    assert_int_equal(loom_msg_encode(m, &data, &len), LOOM_OK);
    publish_bytes("loom/cmd/probe/1/echo", data, len, false);
    loom_free(data);
    loom_msg_release(m);
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_UNSIGNED) > d0, "the unsigned envelope to be refused");
    assert_int_equal(atomic_load(&S.echo_calls), before);
    /* and the service keeps serving signed callers */
    loom_msg *resp = call_echo("bob", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
}

/* Attack: a bare call from a plain client while bare calls are off. */
static void test_bare_call_refused_with_403(void **state)
{
    (void)state;
    int before = atomic_load(&S.echo_calls);
    char port[16], *out = NULL;
    snprintf(port, sizeof port, "%d", S.broker.port);
    const char *args[] = {
        "-V", "5",          "-h", "127.0.0.1", "-p", port, "-t", "loom/cmd/probe/1/echo",
        "-e", "rr/attacks", "-m", "{}",        "-W", "5",  NULL};
    assert_int_equal(run_tool(RR, args, 8000, &out), 0);
    assert_non_null(strstr(out, "\"status\":403"));
    free(out);
    assert_int_equal(atomic_load(&S.echo_calls), before);
}

/* Attacks: another identity's signature claiming probe as sender; a
 * tampered signed envelope; a signature by an identity not in the keyring. */
static void test_impersonation_and_tampering_are_dropped(void **state)
{
    (void)state;
    int before = atomic_load(&S.echo_calls);
    uint64_t sender0 = dropped(S.probe, LOOM__DROP_SENDER);
    uint64_t bad0 = dropped(S.probe, LOOM__DROP_BAD);

    /* mallory signs (validly) a command that claims to come from probe */
    publish_signed_by_mallory(forged_command("probe"), "loom/cmd/probe/1/echo");
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_SENDER) > sender0, "the impersonation to be refused");

    /* mallory signs as itself, then the principal is changed in transit */
    loom_msg *m = forged_command(NULL);
    char *data;
    size_t len;
    assert_int_equal(loom__msg_set(m, &m->principal_id, "guest"), LOOM_OK);
    assert_int_equal(loom_msg_encode(m, &data, &len), LOOM_OK);
    assert_int_equal(loom__trust_sign(&S.mallory->trust, m, false, &data, &len), LOOM_OK);
    char *at = strstr(data, "\"guest\"");
    assert_non_null(at);
    memcpy(at, "\"admin\"", 7);
    publish_bytes("loom/cmd/probe/1/echo", data, len, false);
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_BAD) > bad0, "the tampered envelope to be refused");

    /* a well-formed trailer by an identity the keyring does not list */
    char *sig = strstr(data, ",\"sig\":\"m:mallory:");
    assert_non_null(sig);
    memcpy(sig + 10, "nobodyx", 7); /* "mallory" -> "nobodyx" (same length) */
    publish_bytes("loom/cmd/probe/1/echo", data, len, false);
    loom_free(data);
    loom_msg_release(m);
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_BAD) > bad0 + 1, "the unknown signer to be refused");
    assert_int_equal(atomic_load(&S.echo_calls), before);
}

/* Runs mosquitto_sub in the background: the first message on topic, raw,
 * into path. */
static void sniff_start(t_proc *p, const char *topic, const char *path)
{
    char port[16];
    snprintf(port, sizeof port, "%d", S.broker.port);
    unlink(path);
    const char *args[] = {"-V",  "5",  "-h", "127.0.0.1", "-p", port, "-t",
                          topic, "-C", "1",  "-N",        "-W", "10", NULL};
    t_proc_start(p, "sniffer", tool(SUB), args, NULL, path);
    t_sleep_ms(300); /* subscribed: mosquitto_sub has no "ready" signal */
}

static loom_msg *sniffed(t_proc *p, const char *path)
{
    t_proc_stop(p, 0, 10000);
    char *text = t_read_file(path);
    loom_msg *m = NULL;
    char why[160];
    if (loom_msg_decode(text, strlen(text), &m, why, sizeof why) != LOOM_OK)
        fail_msg("sniffed no envelope (%s): %s", why, text);
    free(text);
    return m;
}

/* Attack: a captured signed probe.echo published to other.echo, a command
 * of the same name in the same process (one MAC key for both): refused,
 * never run as other's. */
static void test_retargeted_command_is_refused(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/sniffed", S.dir);
    t_proc sniffer;
    sniff_start(&sniffer, "loom/cmd/probe/1/echo", path);
    loom_msg *resp = call_echo("erin", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
    loom_msg_release(sniffed(&sniffer, path));
    int before = atomic_load(&other_calls);
    uint64_t r0 = dropped(S.probe, LOOM__DROP_REPLAY);
    publish_file("loom/cmd/other/1/echo", path, false); /* the captured bytes, unchanged */
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_REPLAY) > r0, "the re-targeted command refused");
    assert_int_equal(atomic_load(&other_calls), before);
}

/* Attack: mallory's signed event published again under probe's topic
 * levels, which the subscription filters on: refused as not probe's. */
static void test_event_under_another_senders_topic_is_refused(void **state)
{
    (void)state;
    loom_runtime *w = rt_new("caller", "watch-1", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(w, &watch_svc, NULL), LOOM_OK);
    rt_go(w);
    char path[256];
    snprintf(path, sizeof path, "%s/sniffed-event", S.dir);
    t_proc sniffer;
    sniff_start(&sniffer, "loom/evt/probeEvent/#", path);
    assert_int_equal(loom_runtime_emit(S.mallory, "probeEvent", cJSON_CreateObject()), LOOM_OK);
    loom_msg_release(sniffed(&sniffer, path));
    uint64_t s0 = dropped(w, LOOM__DROP_SENDER);
    publish_file("loom/evt/probeEvent/probe/1", path, false); /* the captured bytes, unchanged */
    WAIT_UNTIL(dropped(w, LOOM__DROP_SENDER) > s0, "the event refused");
    assert_int_equal(atomic_load(&probe_events), 0);
    loom_runtime_destroy(w);
}

/* Attack: a captured signed command published again. */
static void test_replayed_command_is_dropped(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/sniffed", S.dir);
    t_proc sniffer;
    sniff_start(&sniffer, "loom/cmd/probe/1/echo", path);
    int before = atomic_load(&S.echo_calls);
    loom_msg *resp = call_echo("carol", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
    loom_msg_release(sniffed(&sniffer, path));
    uint64_t r0 = dropped(S.probe, LOOM__DROP_REPLAY);
    publish_file("loom/cmd/probe/1/echo", path, false); /* the captured bytes, unchanged */
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_REPLAY) > r0, "the replay to be refused");
    assert_int_equal(atomic_load(&S.echo_calls), before + 1);
}

typedef struct answer {
    atomic_bool done;
    int status;
    char body[256];
} answer;

static void on_answer(loom_runtime *rt, const loom_msg *resp, void *user)
{
    (void)rt;
    answer *a = user;
    a->status = loom_msg_status(resp);
    cJSON *j = loom_msg_result_json(resp);
    char *t = j ? cJSON_PrintUnformatted(j) : NULL;
    snprintf(a->body, sizeof a->body, "%s", t ? t : "");
    free(t);
    cJSON_Delete(j);
    atomic_store(&a->done, true);
}

/* A forged success reply to req, claiming sender service `as`, signed by
 * mallory when sign is set; published on req's reply topic. */
static void forge_reply(const loom_msg *req, const char *as, bool sign)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "paymentId", "p-FORGED");
    loom_msg *resp = loom__msg_success_for(req, r);
    assert_non_null(resp);
    assert_int_equal(loom__msg_set_address(resp, &resp->sender, as, "1", NULL, "mallory-1"),
                     LOOM_OK);
    char *data;
    size_t len;
    assert_int_equal(loom_msg_encode(resp, &data, &len), LOOM_OK);
    if (sign)
        assert_int_equal(loom__trust_sign(&S.mallory->trust, resp, false, &data, &len), LOOM_OK);
    publish_bytes(req->reply_to, data, len, false);
    loom_free(data);
    loom_msg_release(resp);
}

/* Attack: someone who sees a command answers it first (unsigned; signed by
 * another identity claiming the called service; signed as itself). */
static void test_forged_replies_are_dropped(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/sniffed", S.dir);
    t_proc sniffer;
    sniff_start(&sniffer, "loom/cmd/probe/1/slow", path);
    uint64_t u0 = dropped(S.caller, LOOM__DROP_UNSIGNED), s0 = dropped(S.caller, LOOM__DROP_SENDER),
             r0 = dropped(S.caller, LOOM__DROP_REPLY);
    static answer a;
    memset(&a, 0, sizeof a);
    loom_call c = LOOM_CALL_INIT(.service = "probe", .command = "slow", .timeout_ms = 8000);
    assert_int_equal(loom_runtime_invoke(S.caller, &c, on_answer, &a), LOOM_OK);
    loom_msg *req = sniffed(&sniffer, path);
    forge_reply(req, "probe", false);
    forge_reply(req, "probe", true);
    forge_reply(req, "mallory", true);
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_UNSIGNED) > u0, "the unsigned reply to be refused");
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_SENDER) > s0, "the impersonating reply to be refused");
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_REPLY) > r0, "the wrong replier to be refused");
    loom_msg_release(req);
    WAIT_UNTIL(atomic_load(&a.done), "the real answer");
    assert_int_equal(a.status, 200);
    assert_string_equal(a.body, "{\"real\":true}");
}

/* Attack: a remote reply for a call made inside one process (probe calls
 * its own probe.slow, whose id the attacker learnt), validly signed by
 * mallory as itself: an in-process call is answered from the process only. */
static void test_remote_reply_to_in_process_call_is_dropped(void **state)
{
    (void)state;
    uint64_t r0 = dropped(S.probe, LOOM__DROP_REPLY);
    static answer a;
    memset(&a, 0, sizeof a);
    slow_id[0] = '\0';
    loom_call c = {.service = "probe", .command = "slow", .timeout_ms = 8000};
    assert_int_equal(loom_runtime_invoke(S.probe, &c, on_answer, &a), LOOM_OK);
    WAIT_UNTIL(slow_id[0], "the in-process call to start");
    loom_msg *req = loom__msg_new(LOOM_MSG_COMMAND);
    assert_non_null(req);
    memcpy(req->id, slow_id, sizeof req->id);
    assert_int_equal(loom__msg_set(req, &req->reply_to, "loom/reply/probe-1"), LOOM_OK);
    forge_reply(req, "mallory", true);
    loom_msg_release(req);
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_REPLY) > r0, "the remote reply to be refused");
    WAIT_UNTIL(atomic_load(&a.done), "the real answer");
    assert_int_equal(a.status, 200);
    assert_string_equal(a.body, "{\"real\":true}");
}

static bool announcement_is_probes(void);

/* Attack: a signed caller (and a plain client) naming one of probe's own
 * loom topics, its event topic or its announcement, as the reply topic, so
 * that probe publishes there with its own rights: refused before the
 * handler runs, nothing published there. */
static void test_reply_to_a_non_reply_topic_is_refused(void **state)
{
    (void)state;
    int before = atomic_load(&S.echo_calls);
    uint64_t t0 = dropped(S.probe, LOOM__DROP_REPLY_TOPIC);
    char path[256];
    snprintf(path, sizeof path, "%s/sniffed-evt", S.dir);
    t_proc sniffer;
    sniff_start(&sniffer, "loom/evt/#", path);
    loom_msg *m = forged_command(NULL);
    assert_int_equal(loom__msg_set(m, &m->reply_to, "loom/evt/probeEvent/probe/1"), LOOM_OK);
    publish_signed_by_mallory(m, "loom/cmd/probe/1/echo");
    char port[16];
    snprintf(port, sizeof port, "%d", S.broker.port);
    const char *args[] = {"-V", "5",
                          "-h", "127.0.0.1",
                          "-p", port,
                          "-t", "loom/cmd/probe/1/echo",
                          "-e", "loom/svc/probe-1",
                          "-m", "{}",
                          "-W", "1",
                          NULL};
    run_tool(RR, args, 4000, NULL);
    WAIT_UNTIL(dropped(S.probe, LOOM__DROP_REPLY_TOPIC) >= t0 + 2, "both calls to be refused");
    t_proc_stop(&sniffer, SIGTERM, 2000);
    char *got = t_read_file(path);
    assert_null(strstr(got, "commandSuccessResponse"));
    assert_null(strstr(got, "commandErrorResponse"));
    free(got);
    assert_int_equal(atomic_load(&S.echo_calls), before);
    assert_true(announcement_is_probes());
    loom_msg *resp = call_echo("frank", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
}

/* Signs m from `from` and checks its tag at `to` in direction dir; with
 * relabel, the trailer names that identity instead of the signer. */
static loom_err tag_check(loom_runtime *from, loom_runtime *to, loom_msg *m, bool to_all,
                          loom__dir dir, const char *relabel)
{
    char *data, *text;
    size_t len;
    assert_int_equal(loom_msg_encode(m, &data, &len), LOOM_OK);
    assert_int_equal(loom__trust_sign(&from->trust, m, to_all, &data, &len), LOOM_OK);
    char *trailer = strstr(data, ",\"sig\":\"");
    assert_non_null(trailer);
    const char *tag = strchr(trailer + 10, ':') + 1; /* after "<kind>:<name>:" */
    text = relabel ? loom__asprintf("%.*s,\"sig\":\"%c:%s:%s", (int)(trailer - data), data,
                                    trailer[8], relabel, tag)
                   : strdup(data);
    loom_free(data);
    const loom__key *signer;
    size_t signed_len;
    loom_err err =
        loom__trust_verify_bytes(&to->trust, text, strlen(text), dir, &signer, &signed_len);
    free(text);
    return err;
}

/* A tag verifies only for the direction, signer and recipient it was made
 * for: caller's MAC'd command to probe is no reply; relabelled as probe's
 * (the pairwise key is the same both ways) it is not probe's message to
 * caller; an event (a success response for all readers) is no reply; and a
 * message of a type its topic does not carry is refused. */
static void test_tags_bind_direction_signer_and_recipient(void **state)
{
    (void)state;
    loom_msg *cmd = forged_command(NULL);
    assert_int_equal(tag_check(S.caller, S.probe, cmd, false, LOOM__DIR_COMMAND, NULL), LOOM_OK);
    assert_int_equal(tag_check(S.caller, S.probe, cmd, false, LOOM__DIR_REPLY, NULL), LOOM_EPARSE);
    assert_int_equal(tag_check(S.caller, S.probe, cmd, false, LOOM__DIR_ALL, NULL), LOOM_EPARSE);
    assert_int_equal(tag_check(S.caller, S.caller, cmd, false, LOOM__DIR_COMMAND, "probe"),
                     LOOM_EPARSE);
    assert_int_equal(tag_check(S.caller, S.caller, cmd, false, LOOM__DIR_REPLY, "probe"),
                     LOOM_EPARSE);
    loom_msg *ev = loom__msg_success_for(cmd, cJSON_CreateObject());
    assert_non_null(ev);
    assert_int_equal(tag_check(S.probe, S.caller, ev, true, LOOM__DIR_ALL, NULL), LOOM_OK);
    assert_int_equal(tag_check(S.probe, S.caller, ev, true, LOOM__DIR_REPLY, NULL), LOOM_EPARSE);
    loom_msg_release(ev);
    /* a command signed for all readers, decoded where events arrive */
    char *data, why[160];
    size_t len;
    assert_int_equal(loom_msg_encode(cmd, &data, &len), LOOM_OK);
    assert_int_equal(loom__trust_sign(&S.mallory->trust, cmd, true, &data, &len), LOOM_OK);
    loom_msg *m = NULL;
    uint64_t b0 = dropped(S.probe, LOOM__DROP_BAD);
    assert_int_equal(
        loom__trust_decode(&S.probe->trust, data, len, LOOM__DIR_ALL, 99, &m, why, sizeof why),
        LOOM_ESTATE);
    assert_null(m);
    assert_int_equal(dropped(S.probe, LOOM__DROP_BAD), b0 + 1);
    loom_free(data);
    loom_msg_release(cmd);
}

/* The replay cache's hash is keyed per process: nobody outside can pick
 * ids that collide (or crowd one probe sequence) in it. */
static void test_replay_cache_hash_is_keyed(void **state)
{
    (void)state;
    const char *id = "0123456789abcdef0123456789abcdef";
    uint64_t a = loom__trust_id_hash(&S.probe->trust, id, 1);
    assert_true(a == loom__trust_id_hash(&S.probe->trust, id, 1));
    assert_true(a != loom__trust_id_hash(&S.probe->trust, id, 2));
    assert_true(a != loom__trust_id_hash(&S.caller->trust, id, 1));
}

static const char *announce_topic(void)
{
    return "loom/svc/probe-1";
}

/* The retained announcement on the probe's topic, "" when none. */
static char *retained_announcement(void)
{
    char port[16], *out = NULL;
    snprintf(port, sizeof port, "%d", S.broker.port);
    const char *args[] = {"-h", "127.0.0.1", "-p", port, "-t", announce_topic(),
                          "-C", "1",         "-W", "1",  NULL};
    run_tool(SUB, args, 4000, &out);
    return out;
}

static bool announcement_is_probes(void)
{
    char *a = retained_announcement();
    bool ok = strstr(a, "\"probe-1\"") && strstr(a, "\"echo\"");
    free(a);
    return ok;
}

/* Attacks: clearing an instance's retained announcement; replacing it with
 * an unsigned one. The instance notices and restores it. */
static void test_cleared_or_replaced_announcement_is_restored(void **state)
{
    (void)state;
    unsigned n0 = atomic_load(&S.probe->announce_restores);
    publish_bytes(announce_topic(), "", 0, true);
    WAIT_UNTIL(atomic_load(&S.probe->announce_restores) > n0, "the probe to notice the clear");
    WAIT_UNTIL(!atomic_load(&S.probe->announce_lost), "the restored announcement");
    assert_true(announcement_is_probes());
    static const char fake[] = "{\"v\":1,\"messageType\":\"infoServiceAvailable\",\"id\":"
                               "\"0123456789abcdef0123456789abcdef\",\"timestamp\":1,"
                               "\"payload\":{\"services\":[]}}";
    publish_bytes(announce_topic(), fake, sizeof fake - 1, true);
    WAIT_UNTIL(atomic_load(&S.probe->announce_restores) > n0 + 1, "the probe to notice");
    WAIT_UNTIL(!atomic_load(&S.probe->announce_lost), "the restored announcement");
    assert_true(announcement_is_probes());
    assert_true(loom__runtime_ready(S.probe));
    assert_true(loom__remote_has_command(S.caller, "probe", "1", "echo"));
}

/* Attack: the probe's signed announcement, read from the broker, published
 * again (retained) on another instance's topic, where it would outlive the
 * probe's Last Will and take its routes' place: refused. */
static void test_republished_announcement_is_refused(void **state)
{
    (void)state;
    char *a = retained_announcement();
    size_t n = strcspn(a, "\n");
    assert_true(n > 0);
    uint64_t a0 = dropped(S.caller, LOOM__DROP_ANNOUNCE);
    publish_bytes("loom/svc/mallory-9", a, n, true);
    free(a);
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_ANNOUNCE) > a0, "the copy refused");
    publish_bytes("loom/svc/mallory-9", "", 0, true);
    loom_msg *resp = call_echo("frank", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
}

/* Attack: mallory announces (signed as itself) a service named probe with a
 * public route; and an unsigned retained announcement of its own. */
static void test_forged_announcements_are_refused(void **state)
{
    (void)state;
    uint64_t a0 = dropped(S.caller, LOOM__DROP_ANNOUNCE);
    uint64_t u0 = dropped(S.caller, LOOM__DROP_UNSIGNED);
    loom_runtime *fake = rt_new("mallory", "mallory-2", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(fake, &fake_probe_svc, NULL), LOOM_OK);
    rt_go(fake);
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_ANNOUNCE) > a0, "the forged announcement refused");
    assert_false(loom__remote_has_command(S.caller, "probe", "1", "charge"));
    static const char doc[] =
        "{\"v\":1,\"messageType\":\"infoServiceAvailable\",\"id\":"
        "\"0123456789abcdef0123456789abcdee\",\"timestamp\":1,\"payload\":{\"services\":"
        "[{\"name\":\"probe\",\"version\":\"1\",\"commands\":[{\"name\":\"charge\",\"http\":"
        "{\"method\":\"POST\",\"path\":\"/charge\",\"public\":true}}]}]}}";
    publish_bytes("loom/svc/evil", doc, sizeof doc - 1, true);
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_UNSIGNED) > u0, "the unsigned announcement refused");
    assert_false(loom__remote_has_command(S.caller, "probe", "1", "charge"));
    publish_bytes("loom/svc/evil", "", 0, true);
    loom_runtime_destroy(fake);
    /* the real probe keeps serving */
    loom_msg *resp = call_echo("dave", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
}

LOOM_COMMAND(own_cmd, .name = "x", .handler = echo_fn, .http_method = "POST", .http_path = "/x");
LOOM_COMMAND(own_public_cmd, .name = "x", .handler = echo_fn, .http_method = "POST",
             .http_path = "/x", .http_public = true);
LOOM_SERVICE(own_svc, .name = "mallory", .version = "1", .commands = LOOM_COMMANDS(&own_cmd));
LOOM_SERVICE(own_public_svc, .name = "mallory", .version = "1",
             .commands = LOOM_COMMANDS(&own_public_cmd));

static void find_x(void *user, const char *service, const char *version, const cJSON *svc,
                   const cJSON *cmd, bool local)
{
    (void)version;
    (void)svc;
    (void)local;
    const cJSON *name = cJSON_GetObjectItem(cmd, "name");
    if (strcmp(service, "mallory") == 0 && cJSON_IsString(name) &&
        strcmp(name->valuestring, "x") == 0)
        *(int *)user =
            cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(cmd, "http"), "public")) ? 1 : 0;
}

/* Two verified announcements of one command that disagree: the first stays
 * (a later instance cannot make a route public). */
static void test_conflicting_announcements_first_wins(void **state)
{
    (void)state;
    loom_runtime *first = rt_new("mallory", "mallory-4", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(first, &own_svc, NULL), LOOM_OK);
    rt_go(first);
    WAIT_UNTIL(loom__remote_has_command(S.caller, "mallory", "1", "x"), "the first announcement");
    loom_runtime *second = rt_new("mallory", "mallory-5", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(second, &own_public_svc, NULL), LOOM_OK);
    unsigned v0 = loom__routes_version(S.caller);
    rt_go(second);
    WAIT_UNTIL(loom__routes_version(S.caller) != v0, "the second announcement");
    int pub = -1;
    loom__commands_each(S.caller, find_x, &pub);
    assert_int_equal(pub, 0);
    loom_runtime_destroy(second);
    loom_runtime_destroy(first);
}

/* Attack: a validly signed announcement with more commands than
 * limits.instance_commands (mallory's own service). */
static void test_announcement_flood_is_capped(void **state)
{
    (void)state;
    enum { N = 1100 };
    static loom_command_def defs[N];
    static const loom_command_def *list[N + 1];
    static char names[N][16], paths[N][24];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "c%d", i);
        snprintf(paths[i], sizeof paths[i], "/flood/%d", i);
        defs[i] =
            (loom_command_def)LOOM_COMMAND_DEF_INIT(.name = names[i], .handler = echo_fn,
                                                    .http_method = "GET", .http_path = paths[i]);
        list[i] = &defs[i];
    }
    list[N] = NULL;
    static const loom_service_def flood =
        LOOM_SERVICE_DEF_INIT(.name = "mallory", .version = "1", .commands = list);
    uint64_t a0 = dropped(S.caller, LOOM__DROP_ANNOUNCE);
    loom_runtime *m = rt_new("mallory", "mallory-3", NULL, NULL);
    assert_int_equal(loom_runtime_add_service(m, &flood, NULL), LOOM_OK);
    rt_go(m);
    WAIT_UNTIL(dropped(S.caller, LOOM__DROP_ANNOUNCE) > a0, "the flood refused");
    assert_false(loom__remote_has_command(S.caller, "mallory", "1", "c0"));
    loom_runtime_destroy(m);
    loom_msg *resp = call_echo("erin", NULL);
    assert_int_equal(loom_msg_status(resp), 200);
    loom_msg_release(resp);
}

/* ========================================================================= */
/* Group "split": the shop with the shipped ACL                              */

static struct {
    char dir[128];
    bool on_nats; /* the "split_nats" group */
    t_broker broker;
    t_nats nats;
    t_proc procs[3]; /* shop-a, pay-1, bridge */
    int http_port;
    char mallory_pass[64], operator_pass[64];
} L;

typedef struct http_res {
    long status;
    t_buf body;
} http_res;

static size_t collect(char *p, size_t size, size_t n, void *user)
{
    t_buf_add(user, p, size * n);
    return size * n;
}

static long http(http_res *res, const char *method, const char *path, const char *body, bool token)
{
    free(res->body.data);
    memset(res, 0, sizeof *res);
    t_buf_add(&res->body, "", 0);
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", L.http_port, path);
    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &res->body);
    if (token)
        hdrs = curl_slist_append(hdrs, "Authorization: Bearer tok-attacks");
    if (body) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &res->status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return res->status;
}

static void read_secret(const char *user, char *out, size_t n)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s.password", L.dir, user);
    char *t = t_read_file(path);
    snprintf(out, n, "%.*s", (int)strcspn(t, "\n"), t);
    free(t);
}

static void start_shop(t_proc *p, const char *user, const char *services, const char *extra)
{
    char conf[256], log[256], state[256];
    snprintf(conf, sizeof conf, "%s/%s.yaml", L.dir, user);
    snprintf(log, sizeof log, "%s/%s.log", L.dir, user);
    snprintf(state, sizeof state, "file:%s/state.json", L.dir);
    const char *args[] = {"--config",
                          conf,
                          "--broker",
                          L.on_nats ? t_nats_url(&L.nats) : t_broker_url(&L.broker),
                          "--services",
                          services,
                          "--state",
                          extra ? "memory:" : state,
                          extra ? "--http" : NULL,
                          extra,
                          NULL};
    t_proc_start(p, user, shop_path, args, NULL, log);
}

static int split_setup_on(bool nats)
{
    memset(&L, 0, sizeof L);
    L.on_nats = nats;
    snprintf(L.dir, sizeof L.dir, "/tmp/loom-attacks-split-XXXXXX");
    if (!mkdtemp(L.dir))
        return -1;
    /* the deployment kit, as split.sh uses it, plus mallory */
    const char *args[] = {L.dir,
                          shop_path,
                          "shop-a:shop-a:users,orders,notifications:payments",
                          "pay-1:payments:payments:orders",
                          "bridge:bridge:-",
                          "operator::-:payments",
                          "mallory:mallory:reviews:-",
                          NULL};
    t_run r;
    t_run_prog(&r, "examples/shop/deploy/secure.sh", args, NULL, 20000);
    if (r.status != 0)
        fail_msg("secure.sh failed: %s", t_run_err(&r));
    t_run_free(&r);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", L.dir, nats ? "nats-auth.conf" : "mosquitto-auth.conf");
    char *auth = t_read_file(path);
    if (nats)
        t_nats_start_with(&L.nats, auth);
    else
        t_broker_start_with(&L.broker, auth);
    free(auth);
    /* the bridge authenticates HTTP callers */
    snprintf(path, sizeof path, "%s/bridge.yaml", L.dir);
    FILE *f = fopen(path, "a");
    fprintf(f, "http:\n  auth:\n    tokens: [tok-attacks]\n");
    fclose(f);
    read_secret("mallory", L.mallory_pass, sizeof L.mallory_pass);
    read_secret("operator", L.operator_pass, sizeof L.operator_pass);
    L.http_port = t_free_port();
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", L.http_port);
    start_shop(&L.procs[0], "shop-a", "users,orders,notifications", NULL);
    start_shop(&L.procs[1], "pay-1", "payments", NULL);
    start_shop(&L.procs[2], "bridge", "none", listen);
    http_res res = {0};
    int64_t until = t_mono_ms() + 15000;
    while (!(http(&res, "GET", "/readyz", NULL, false) == 200 &&
             strstr(res.body.data, "\"routes\":6"))) {
        if (t_mono_ms() > until) {
            for (int i = 0; i < 3; i++)
                t_proc_print_log(&L.procs[i], 2000);
            fail_msg("the split shop did not come up: %s", res.body.data);
        }
        t_sleep_ms(100);
    }
    if (http(&res, "POST", "/api/v1/users", "{\"name\":\"Ada\",\"email\":\"ada@example.com\"}",
             true) != 200)
        fail_msg("POST /users: %ld %s", res.status, res.body.data);
    free(res.body.data);
    return 0;
}

static int split_setup(void **state)
{
    (void)state;
    return split_setup_on(false);
}

static int split_nats_setup(void **state)
{
    (void)state;
    return split_setup_on(true);
}

static int split_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++)
        t_proc_stop(&L.procs[i], SIGTERM, 5000);
    if (L.on_nats)
        t_nats_stop(&L.nats);
    else
        t_broker_stop(&L.broker);
    t_proc_reap_all(2000);
    t_remove_tree(L.dir);
    return 0;
}

/* The system keeps serving: an order placed through the bridge is charged. */
static void order_works(void)
{
    http_res res = {0};
    http(&res, "POST", "/api/v1/orders",
         "{\"userId\":\"u-1\",\"items\":[{\"sku\":\"book-42\",\"quantity\":1}],\"amount\":9.5}",
         true);
    if (res.status != 200 || !strstr(res.body.data, "\"paymentId\":\"p-") ||
        strstr(res.body.data, "FORGED"))
        fail_msg("order: HTTP %ld %s", res.status, res.body.data);
    free(res.body.data);
}

/* mosquitto client args as user (NULL: anonymous), then the rest. */
static int as_user(int which, const char *user, const char *const *rest, int timeout_ms, char **out)
{
    const char *args[40];
    size_t n = 0;
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    const char *base[] = {"-V", "5", "-h", "127.0.0.1", "-p", port};
    for (size_t i = 0; i < 6; i++)
        args[n++] = base[i];
    if (user) {
        args[n++] = "-u";
        args[n++] = user;
        args[n++] = "-P";
        args[n++] = strcmp(user, "operator") == 0 ? L.operator_pass : L.mallory_pass;
    }
    for (; *rest && n < 39; rest++)
        args[n++] = *rest;
    args[n] = NULL;
    return run_tool(which, args, timeout_ms, out);
}

/* Same, in the background, output to path. */
static void as_user_bg(t_proc *p, int which, const char *user, const char *const *rest,
                       const char *path)
{
    const char *args[40];
    size_t n = 0;
    char port[16];
    snprintf(port, sizeof port, "%d", L.broker.port);
    const char *base[] = {"-V", "5",  "-h", "127.0.0.1", "-p",
                          port, "-u", user, "-P",        L.mallory_pass};
    for (size_t i = 0; i < 10; i++)
        args[n++] = base[i];
    for (; *rest && n < 39; rest++)
        args[n++] = *rest;
    args[n] = NULL;
    unlink(path);
    t_proc_start(p, "mallory", tool(which), args, NULL, path);
    t_sleep_ms(300); /* connected and subscribed */
}

/* Attack: no credentials at all. */
static void test_split_anonymous_clients_are_refused(void **state)
{
    (void)state;
    const char *sub[] = {"-t", "loom/#", "-C", "1", "-W", "2", NULL};
    assert_int_not_equal(as_user(SUB, NULL, sub, 5000, NULL), 0);
    const char *pub[] = {"-t", "loom/cmd/payments/1/charge", "-m", "{\"orderId\":\"o-x\"}", NULL};
    assert_int_not_equal(as_user(PUB, NULL, pub, 5000, NULL), 0);
    order_works();
}

/* Attack: mosquitto_rr straight to payments.charge by a user the ACL does
 * not let call it; the operator, whom it does, still can. */
static void test_split_direct_call_by_unauthorised_user(void **state)
{
    (void)state;
    char *out = NULL;
    const char *rr[] = {"-t", "loom/cmd/payments/1/charge",
                        "-e", "loom/reply/mallory/rr",
                        "-m", "{\"orderId\":\"o-evil\",\"amount\":999999}",
                        "-W", "2",
                        NULL};
    as_user(RR, "mallory", rr, 6000, &out);
    assert_null(strstr(out, "captured"));
    free(out);
    assert_int_equal(t_proc_log_count(&L.procs[1], "o-evil"), 0);
    const char *ok[] = {
        "-t", "loom/cmd/payments/1/charge",           "-e", "loom/reply/operator/rr",
        "-m", "{\"orderId\":\"o-ops\",\"amount\":1}", "-W", "5",
        NULL};
    assert_int_equal(as_user(RR, "operator", ok, 8000, &out), 0);
    /* payments answered it: o-ops is no order, so with its order check
     * the answer is 422 (mallory got no answer at all) */
    assert_non_null(strstr(out, "unknown order"));
    free(out);
    order_works();
}

/* Attack: joining payments' shared subscription to take (and answer) its
 * commands. */
static void test_split_joining_another_services_group(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/mallory-group.out", L.dir);
    t_proc p;
    const char *sub[] = {"-t", "$share/payments.1/loom/cmd/payments/1/charge", "-v", "-W", "4",
                         NULL};
    as_user_bg(&p, SUB, "mallory", sub, path);
    for (int i = 0; i < 4; i++)
        order_works();
    t_proc_stop(&p, SIGTERM, 6000);
    char *got = t_read_file(path);
    assert_null(strstr(got, "loom/cmd/"));
    free(got);
}

/* Attack: reading everything (mosquitto_sub -t 'loom/#'). */
static void test_split_sniffing(void **state)
{
    (void)state;
    char path[256];
    snprintf(path, sizeof path, "%s/mallory-sniff.out", L.dir);
    t_proc p;
    const char *sub[] = {"-t", "loom/#", "-v", "-W", "3", NULL};
    as_user_bg(&p, SUB, "mallory", sub, path);
    order_works();
    order_works();
    t_proc_stop(&p, SIGTERM, 6000);
    char *got = t_read_file(path);
    assert_null(strstr(got, "loom/cmd/"));
    assert_null(strstr(got, "loom/reply/"));
    free(got);
}

/* Attacks: clearing pay-1's retained announcement; replacing it. */
static void test_split_clearing_another_instances_announcement(void **state)
{
    (void)state;
    const char *clear[] = {"-r", "-n", "-t", "loom/svc/pay-1", NULL};
    as_user(PUB, "mallory", clear, 5000, NULL);
    const char *replace[] = {"-r", "-t", "loom/svc/pay-1", "-m", "{\"v\":1}", NULL};
    as_user(PUB, "mallory", replace, 5000, NULL);
    char *out = NULL;
    const char *look[] = {"-t", "loom/svc/pay-1", "-C", "1", "-W", "2", NULL};
    as_user(SUB, "operator", look, 5000, &out);
    assert_non_null(strstr(out, "\"payments\""));
    free(out);
    http_res res = {0};
    assert_int_equal(http(&res, "GET", "/readyz", NULL, false), 200);
    assert_non_null(strstr(res.body.data, "\"routes\":6"));
    free(res.body.data);
    order_works();
}

/* The bridge's loom_messages_refused_total for reason, or -1. */
static long refused(http_res *res, const char *reason)
{
    if (http(res, "GET", "/metrics", NULL, false) != 200)
        return -1;
    char key[96];
    snprintf(key, sizeof key, "loom_messages_refused_total{reason=\"%s\"} ", reason);
    const char *at = strstr(res->body.data, key);
    return at ? atol(at + strlen(key)) : -1;
}

/* mallory's unsigned announcement listing payments.charge as public (the
 * issue's first finding). */
static const char forged_doc[] =
    "{\"v\":1,\"messageType\":\"infoServiceAvailable\",\"id\":"
    "\"0123456789abcdef0123456789abcdef\",\"timestamp\":1,\"payload\":{\"services\":"
    "[{\"name\":\"payments\",\"version\":\"1\",\"commands\":[{\"name\":\"charge\",\"http\":"
    "{\"method\":\"POST\",\"path\":\"/payments\",\"public\":true}}]}]}}";

/* forged_doc with 5,000 more routes (330 KB): over limits.announcement. */
static t_buf flood_doc(void)
{
    t_buf flood = {0};
    t_buf_add(&flood, forged_doc, sizeof forged_doc - 6); /* up to the commands' end */
    for (int i = 0; i < 5000; i++) {
        char c[96];
        snprintf(c, sizeof c,
                 ",{\"name\":\"c%d\",\"http\":{\"method\":\"GET\",\"path\":\"/f/%d\"}}", i, i);
        t_buf_add(&flood, c, strlen(c));
    }
    t_buf_add(&flood, "]}]}}", 5);
    return flood;
}

/* Attack: a retained announcement of mallory's own listing payments.charge
 * as public (the issue's first finding), and a 5,000-route one. */
static void test_split_forged_public_route_and_flood(void **state)
{
    (void)state;
    const char *pub[] = {"-r", "-t", "loom/svc/mallory", "-m", forged_doc, NULL};
    assert_int_equal(as_user(PUB, "mallory", pub, 5000, NULL), 0);
    t_buf flood = flood_doc();
    char path[256];
    snprintf(path, sizeof path, "%s/flood.json", L.dir);
    write_file(path, flood.data, flood.len);
    free(flood.data);
    const char *pub2[] = {"-r", "-t", "loom/svc/mallory", "-f", path, NULL};
    assert_int_equal(as_user(PUB, "mallory", pub2, 5000, NULL), 0);
    http_res res = {0};
    int64_t until = t_mono_ms() + WAIT_MS;
    while (refused(&res, "unsigned") < 1 || refused(&res, "announcement") < 1) {
        if (t_mono_ms() > until)
            fail_msg("the bridge did not refuse both announcements: %s", res.body.data);
        t_sleep_ms(50);
    }
    assert_int_equal(
        http(&res, "POST", "/api/v1/payments", "{\"orderId\":\"o-9\",\"amount\":1}", false), 401);
    assert_int_equal(http(&res, "GET", "/readyz", NULL, false), 200);
    assert_non_null(strstr(res.body.data, "\"routes\":6"));
    assert_int_equal(http(&res, "GET", "/api/openapi.json", NULL, false), 200);
    /* the payments operation stays protected (public ones say security: []) */
    cJSON *api = t_json(res.body.data);
    cJSON *op = cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(api, "paths"), "/api/v1/payments"), "post");
    assert_non_null(op);
    cJSON *sec = cJSON_GetObjectItem(op, "security");
    assert_true(!sec || cJSON_GetArraySize(sec) > 0);
    cJSON_Delete(api);
    free(res.body.data);
    const char *clear[] = {"-r", "-n", "-t", "loom/svc/mallory", NULL};
    as_user(PUB, "mallory", clear, 5000, NULL);
    order_works();
}

/* Attack: connecting with pay-1's client id to take its session over. */
static void test_split_client_id_takeover(void **state)
{
    (void)state;
    size_t lost0 = t_proc_log_count(&L.procs[1], "connection lost");
    char path[256];
    snprintf(path, sizeof path, "%s/mallory-takeover.out", L.dir);
    t_proc p;
    const char *sub[] = {"-i", "pay-1", "-t", "loom/cmd/payments/#", "-v", "-W", "3", NULL};
    as_user_bg(&p, SUB, "mallory", sub, path);
    order_works();
    order_works();
    t_proc_stop(&p, SIGTERM, 6000);
    char *got = t_read_file(path);
    assert_null(strstr(got, "loom/cmd/"));
    free(got);
    assert_int_equal(t_proc_log_count(&L.procs[1], "connection lost"), lost0);
    order_works();
}

/* --- the same deployment over NATS (users and subject permissions) ---------- */

/* A nats.c connection as user (NULL: anonymous) with password pass
 * (NULL: the user's own); NULL when refused. */
static natsConnection *nats_as(const char *user, const char *pass, const char *name)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    if (natsOptions_Create(&o) != NATS_OK)
        fail_msg("natsOptions_Create");
    natsOptions_SetURL(o, t_nats_url(&L.nats));
    natsOptions_SetTimeout(o, 2000);
    natsOptions_SetMaxReconnect(o, 0);
    if (name)
        natsOptions_SetName(o, name);
    if (user)
        natsOptions_SetUserInfo(o, user,
                                pass                            ? pass
                                : strcmp(user, "operator") == 0 ? L.operator_pass
                                                                : L.mallory_pass);
    if (natsConnection_Connect(&nc, o) != NATS_OK)
        nc = NULL;
    natsOptions_Destroy(o);
    return nc;
}

/* Publishes data on subject as user; the publish's status. */
static natsStatus nats_pub_as(const char *user, const char *subject, const char *reply,
                              const void *data, size_t len)
{
    natsConnection *nc = nats_as(user, NULL, NULL);
    assert_non_null(nc);
    natsMsg *m = NULL;
    natsStatus st = natsMsg_Create(&m, subject, reply, data, (int)len);
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(nc, m);
    if (st == NATS_OK)
        st = natsConnection_FlushTimeout(nc, 2000);
    natsMsg_Destroy(m);
    natsConnection_Destroy(nc);
    return st;
}

/* Waits until the bridge has refused more than `before` messages for reason. */
static void wait_refused(const char *reason, long before)
{
    http_res res = {0};
    int64_t until = t_mono_ms() + WAIT_MS;
    while (refused(&res, reason) <= before) {
        if (t_mono_ms() > until)
            fail_msg("the bridge refused no more messages (%s): %s", reason, res.body.data);
        t_sleep_ms(50);
    }
    free(res.body.data);
}

/* The bridge still has the 6 real routes, payments stays protected, and an
 * order goes through. */
static void shop_intact(void)
{
    http_res res = {0};
    assert_int_equal(http(&res, "GET", "/readyz", NULL, false), 200);
    assert_non_null(strstr(res.body.data, "\"routes\":6"));
    assert_int_equal(
        http(&res, "POST", "/api/v1/payments", "{\"orderId\":\"o-9\",\"amount\":1}", false), 401);
    free(res.body.data);
    order_works();
}

/* Attack over NATS: a forged announcement making payments.charge public
 * (mallory may publish on its own announcement subject). */
static void test_nats_forged_announcement(void **state)
{
    (void)state;
    http_res res = {0};
    long u0 = refused(&res, "unsigned");
    free(res.body.data);
    assert_int_equal(
        nats_pub_as("mallory", "loom.svc.mallory", NULL, forged_doc, sizeof forged_doc - 1),
        NATS_OK);
    wait_refused("unsigned", u0);
    shop_intact();
}

/* Attack over NATS: 5,000 announced routes (330 KB, under nats-server's
 * max_payload, over limits.announcement). */
static void test_nats_announcement_flood(void **state)
{
    (void)state;
    t_buf flood = flood_doc();
    http_res res = {0};
    long a0 = refused(&res, "announcement");
    free(res.body.data);
    assert_int_equal(nats_pub_as("mallory", "loom.svc.mallory", NULL, flood.data, flood.len),
                     NATS_OK);
    free(flood.data);
    wait_refused("announcement", a0);
    shop_intact();
}

/* Attack over NATS: a request to payments.charge by a user whose
 * permissions do not allow it; the operator's, which do, is answered. */
static void test_nats_direct_call_by_unauthorised_user(void **state)
{
    (void)state;
    assert_null(nats_as(NULL, NULL, NULL)); /* no credentials: refused */
    natsConnection *nc = nats_as("mallory", NULL, NULL);
    assert_non_null(nc);
    natsMsg *reply = NULL;
    natsStatus st =
        natsConnection_RequestString(&reply, nc, "loom.cmd.payments.1.charge",
                                     "{\"orderId\":\"o-evil\",\"amount\":999999}", 1500);
    assert_int_not_equal(st, NATS_OK);
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
    assert_int_equal(t_proc_log_count(&L.procs[1], "o-evil"), 0);
    nc = nats_as("operator", NULL, NULL);
    assert_non_null(nc);
    reply = NULL;
    assert_int_equal(natsConnection_RequestString(&reply, nc, "loom.cmd.payments.1.charge",
                                                  "{\"orderId\":\"o-ops\",\"amount\":1}", 5000),
                     NATS_OK);
    assert_non_null(strstr(natsMsg_GetData(reply), "unknown order"));
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
    shop_intact();
}

/* An unsigned charge envelope claiming principal admin of tenant acme-corp. */
static char *forged_charge(size_t *len)
{
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    assert_non_null(m);
    assert_int_equal(loom__msg_set(m, &m->principal_id, "admin"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->tenant_id, "acme-corp"), LOOM_OK);
    assert_int_equal(loom__msg_set(m, &m->reply_to, "loom.reply.operator"), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->sender, "orders", "1", NULL, "shop-a"), LOOM_OK);
    assert_int_equal(loom__msg_set_address(m, &m->receiver, "payments", "1", "charge", NULL),
                     LOOM_OK);
    m->payload = t_json("{\"orderId\":\"o-forged\",\"amount\":5}");
    m->deadline = m->timestamp + 4000;
    char *data;
    assert_int_equal(loom_msg_encode(m, &data, len), LOOM_OK);
    loom_msg_release(m);
    return data;
}

/* Attack over NATS: the operator, who may publish payments' commands,
 * sends an envelope with a forged principal and tenant (and a forged
 * sender): payments drops it as unsigned before any handler. Runs first in
 * its group: the refusal is seen in payments' log, which says at most one
 * refusal a second. */
static void test_nats_forged_principal(void **state)
{
    (void)state;
    size_t n0 = t_proc_log_count(&L.procs[1], "unsigned envelope"), len;
    char *data = forged_charge(&len);
    assert_int_equal(nats_pub_as("operator", "loom.cmd.payments.1.charge", NULL, data, len),
                     NATS_OK);
    loom_free(data);
    WAIT_UNTIL(t_proc_log_count(&L.procs[1], "unsigned envelope") > n0,
               "payments to refuse the unsigned envelope");
    assert_int_equal(t_proc_log_count(&L.procs[1], "o-forged"), 0);
    shop_intact();
}

/* Attack over NATS: joining payments' queue group to take its commands,
 * and answering them on the bridge's reply subject (which mallory, a
 * service, may publish to): unsigned, and signed by mallory claiming
 * payments. */
static void test_nats_joining_group_and_answering(void **state)
{
    (void)state;
    natsConnection *nc = nats_as("mallory", NULL, NULL);
    assert_non_null(nc);
    natsSubscription *group = NULL;
    natsConnection_QueueSubscribeSync(&group, nc, "loom.cmd.payments.1.charge", "payments%2E1");
    natsConnection_Flush(nc);
    http_res res = {0};
    long u0 = refused(&res, "unsigned"), s0 = refused(&res, "wrong_sender");
    free(res.body.data);
    /* a reply from mallory's own runtime, signed with its key */
    loom_config *cfg;
    char path[256];
    snprintf(path, sizeof path, "%s/mallory.yaml", L.dir);
    assert_int_equal(loom_config_create(&cfg), LOOM_OK);
    assert_int_equal(loom_config_load_file(cfg, path), LOOM_OK);
    loom_runtime_config rc = {.config = cfg, .log_level = LOOM_LOG_OFF};
    loom_runtime *rt = NULL;
    assert_int_equal(loom_runtime_create(&rt, &rc), LOOM_OK);
    loom_config_destroy(cfg);
    loom_msg *req = loom__msg_new(LOOM_MSG_COMMAND);
    assert_non_null(req);
    loom_msg *resp = loom__msg_success_for(req, t_json("{\"paymentId\":\"p-FORGED\"}"));
    loom_msg_release(req);
    assert_int_equal(
        loom__msg_set_address(resp, &resp->sender, "payments", "1", "charge", "mallory"), LOOM_OK);
    char *data;
    size_t len;
    assert_int_equal(loom_msg_encode(resp, &data, &len), LOOM_OK);
    assert_int_equal(nats_pub_as("mallory", "loom.reply.bridge", NULL, data, len), NATS_OK);
    assert_int_equal(loom__trust_sign(&rt->trust, resp, false, &data, &len), LOOM_OK);
    assert_int_equal(nats_pub_as("mallory", "loom.reply.bridge", NULL, data, len), NATS_OK);
    loom_free(data);
    loom_msg_release(resp);
    loom_runtime_destroy(rt);
    wait_refused("unsigned", u0);
    wait_refused("wrong_sender", s0);
    for (int i = 0; i < 3; i++)
        order_works();
    natsMsg *m = NULL;
    assert_int_not_equal(natsSubscription_NextMsg(&m, group, 100), NATS_OK);
    natsSubscription_Destroy(group);
    natsConnection_Destroy(nc);
    shop_intact();
}

/* Attack over NATS: reading commands and replies (">", "loom.cmd.>",
 * "loom.reply.>"): the server refuses each subscription. */
static void test_nats_sniffing(void **state)
{
    (void)state;
    natsConnection *nc = nats_as("mallory", NULL, NULL);
    assert_non_null(nc);
    const char *subjects[] = {">", "loom.cmd.>", "loom.reply.>"};
    natsSubscription *subs[3] = {NULL};
    for (int i = 0; i < 3; i++)
        natsConnection_SubscribeSync(&subs[i], nc, subjects[i]);
    natsConnection_Flush(nc);
    order_works();
    order_works();
    for (int i = 0; i < 3; i++) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, subs[i], i ? 100 : 500) == NATS_OK)
            fail_msg("mallory read %s on %s", natsMsg_GetSubject(m), subjects[i]);
        natsSubscription_Destroy(subs[i]);
    }
    natsConnection_Destroy(nc);
    shop_intact();
}

/* Attack over NATS: logging in as pay-1 with another password, and
 * connecting under pay-1's name: refused / nothing taken over. */
static void test_nats_identity_takeover(void **state)
{
    (void)state;
    size_t lost0 = t_proc_log_count(&L.procs[1], "connection lost");
    assert_null(nats_as("pay-1", L.mallory_pass, NULL));
    natsConnection *nc = nats_as("mallory", NULL, "pay-1");
    assert_non_null(nc);
    natsSubscription *sub = NULL;
    natsConnection_SubscribeSync(&sub, nc, "loom.cmd.payments.>");
    natsConnection_Flush(nc);
    order_works();
    natsMsg *m = NULL;
    assert_int_not_equal(natsSubscription_NextMsg(&m, sub, 300), NATS_OK);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    assert_int_equal(t_proc_log_count(&L.procs[1], "connection lost"), lost0);
    shop_intact();
}

/* Attack over NATS: oversized messages. Over nats-server's max_payload
 * (1 MB by default) the publish is refused; under it, over
 * limits.announcement, the bridge refuses it. */
static void test_nats_oversized_message(void **state)
{
    (void)state;
    size_t big = 2 << 20;
    char *junk = malloc(big);
    assert_non_null(junk);
    memset(junk, 'x', big);
    assert_int_not_equal(nats_pub_as("mallory", "loom.svc.mallory", NULL, junk, big), NATS_OK);
    http_res res = {0};
    long a0 = refused(&res, "announcement");
    free(res.body.data);
    assert_int_equal(nats_pub_as("mallory", "loom.svc.mallory", NULL, junk, 600000), NATS_OK);
    free(junk);
    wait_refused("announcement", a0);
    shop_intact();
}

#define T(fn) cmocka_unit_test(fn)

int main(void)
{
    const char *filter = getenv("T_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const char *build = getenv("LOOM_TEST_BUILD");
    snprintf(shop_path, sizeof shop_path, "%s/examples/shop/shop", build && *build ? build : ".");
    if (access(shop_path, X_OK) != 0) {
        fprintf(stderr, "test_attacks: build the examples first (%s)\n", shop_path);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest signing[] = {
        T(test_signing_configuration_errors),
        T(test_signed_call_carries_verified_identity),
        T(test_forged_principal_unsigned_is_dropped),
        T(test_bare_call_refused_with_403),
        T(test_impersonation_and_tampering_are_dropped),
        T(test_replayed_command_is_dropped),
        T(test_retargeted_command_is_refused),
        T(test_event_under_another_senders_topic_is_refused),
        T(test_forged_replies_are_dropped),
        T(test_remote_reply_to_in_process_call_is_dropped),
        T(test_tags_bind_direction_signer_and_recipient),
        T(test_reply_to_a_non_reply_topic_is_refused),
        T(test_replay_cache_hash_is_keyed),
        T(test_cleared_or_replaced_announcement_is_restored),
        T(test_forged_announcements_are_refused),
        T(test_republished_announcement_is_refused),
        T(test_conflicting_announcements_first_wins),
        T(test_announcement_flood_is_capped),
    };
    const struct CMUnitTest split[] = {
        T(test_split_anonymous_clients_are_refused),
        T(test_split_direct_call_by_unauthorised_user),
        T(test_split_joining_another_services_group),
        T(test_split_sniffing),
        T(test_split_clearing_another_instances_announcement),
        T(test_split_forged_public_route_and_flood),
        T(test_split_client_id_takeover),
    };
    int failed =
        cmocka_run_group_tests_name("attacks_signing", signing, signing_setup, signing_teardown);
    failed += cmocka_run_group_tests_name("attacks_split", split, split_setup, split_teardown);
    const struct CMUnitTest split_nats[] = {
        /* first: payments logs refusals at most once a second, and the
         * announcements below are refused by it too */
        T(test_nats_forged_principal),
        T(test_nats_forged_announcement),
        T(test_nats_announcement_flood),
        T(test_nats_direct_call_by_unauthorised_user),
        T(test_nats_joining_group_and_answering),
        T(test_nats_sniffing),
        T(test_nats_identity_takeover),
        T(test_nats_oversized_message),
    };
    failed += cmocka_run_group_tests_name("attacks_split_nats", split_nats, split_nats_setup,
                                          split_teardown);
    nats_CloseAndWait(5000);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
