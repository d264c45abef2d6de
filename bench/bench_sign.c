/* What signing costs per message (docs/security.md, "Cost"): encoding and
 * decoding a command envelope and its reply with security.signing off, and
 * with it on (pairwise MAC, as on the request/reply path), and an event
 * signed with Ed25519ph (as events and announcements are).
 *
 *   bench_sign KEYDIR [iterations]
 *
 * KEYDIR holds payments.key, bench.key and a keyring listing both
 * (examples/shop/deploy/secure.sh DIR SHOP pay:payments:payments
 * bench:bench:-). Prints one JSON line per case: nanoseconds per message
 * for the sender (encode [+ sign]) and the receiver ([verify +] decode). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "codec/msg.h"
#include "core/runtime.h"
#include "core/util.h"

static loom_runtime *make(const char *dir, const char *identity, bool signing)
{
    loom_config *cfg;
    char key[512], ring[512];
    snprintf(key, sizeof key, "%s/keys/%s.key", dir, identity);
    snprintf(ring, sizeof ring, "%s/keyring", dir);
    if (loom_config_create(&cfg) || loom_config_set(cfg, "security.key_file", key) ||
        loom_config_set(cfg, "security.keyring", ring) ||
        loom_config_set(cfg, "security.signing", signing ? "true" : "false"))
        exit(1);
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .log_level = LOOM_LOG_WARN, .workers = 1);
    loom_runtime *rt;
    if (loom_runtime_create(&rt, &rc)) {
        fprintf(stderr, "bench_sign: cannot create a runtime with the keys in %s\n", dir);
        exit(1);
    }
    loom_config_destroy(cfg);
    return rt;
}

/* ns per message to send (encode + sign) and receive (verify + decode) m
 * from `from` to `to`. */
static void run(const char *name, loom_runtime *from, loom_runtime *to, loom_msg *m, bool to_all,
                long n)
{
    double send = 0, recv = 0;
    for (long i = 0; i < n; i++) {
        loom__random_id(m->id); /* a fresh id: the replay cache would refuse repeats */
        m->timestamp = loom__now_ms();
        double t0 = bench_now();
        char *data;
        size_t len;
        if (loom_msg_encode(m, &data, &len) ||
            loom__trust_sign(&from->trust, m, to_all, &data, &len))
            exit(1);
        double t1 = bench_now();
        loom_msg *got;
        char why[160];
        loom__dir dir = to_all                        ? LOOM__DIR_ALL
                        : m->type == LOOM_MSG_COMMAND ? LOOM__DIR_COMMAND
                                                      : LOOM__DIR_REPLY;
        if (loom__trust_decode(&to->trust, data, len, dir, 0, &got, why, sizeof why)) {
            fprintf(stderr, "bench_sign: %s: %s\n", name, why);
            exit(1);
        }
        double t2 = bench_now();
        loom_msg_release(got);
        free(data);
        send += t1 - t0;
        recv += t2 - t1;
    }
    printf("{\"case\":\"%s\",\"send_ns\":%.0f,\"receive_ns\":%.0f}\n", name, send / n * 1e9,
           recv / n * 1e9);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_sign KEYDIR [iterations]\n");
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 20000;
    loom_runtime *pay_off = make(argv[1], "payments", false),
                 *bench_off = make(argv[1], "bench", false);
    loom_runtime *pay_on = make(argv[1], "payments", true),
                 *bench_on = make(argv[1], "bench", true);
    loom_msg *cmd = loom__msg_new(LOOM_MSG_COMMAND);
    loom__msg_set(cmd, &cmd->reply_to, "loom/reply/bench-1");
    loom__msg_set(cmd, &cmd->principal_id, "alice");
    loom__msg_set_address(cmd, &cmd->sender, NULL, NULL, NULL, "bench-1");
    loom__msg_set_address(cmd, &cmd->receiver, "payments", "1", "charge", NULL);
    cmd->payload = cJSON_Parse("{\"orderId\":\"o-1\",\"amount\":5}");
    loom__random_id(cmd->trace_id);
    cmd->deadline = loom__now_ms() + 3600000;
    run("command_off", bench_off, pay_off, cmd, false, n);
    run("command_mac", bench_on, pay_on, cmd, false, n);
    /* an event the size of the command: Ed25519ph, as events and announcements */
    loom_msg *evt = loom__msg_new(LOOM_MSG_CUSTOM);
    loom__msg_set(evt, &evt->event_name, "onCharge");
    loom__msg_set(evt, &evt->principal_id, "alice");
    evt->payload = cJSON_Parse("{\"orderId\":\"o-1\",\"amount\":5}");
    loom__random_id(evt->trace_id);
    run("event_ed25519", bench_on, pay_on, evt, true, n / 10);
    loom_msg_release(evt);
    loom__msg_set(cmd, &cmd->signer, "bench"); /* as received: the reply is for bench */
    loom_msg *reply = loom__msg_success_for(
        cmd, cJSON_Parse("{\"paymentId\":\"p-1\",\"orderId\":\"o-1\",\"amount\":5,"
                         "\"currency\":\"EUR\",\"status\":\"captured\"}"));
    reply->deadline = cmd->deadline;
    run("reply_off", pay_off, bench_off, reply, false, n);
    run("reply_mac", pay_on, bench_on, reply, false, n);
    loom_msg_release(reply);
    loom_msg_release(cmd);
    loom_runtime_destroy(pay_off);
    loom_runtime_destroy(bench_off);
    loom_runtime_destroy(pay_on);
    loom_runtime_destroy(bench_on);
    return 0;
}
