/* libFuzzer target: the verification path (lib/core/trust.c): trailer
 * parsing, MAC and Ed25519 checks, the sender and replay checks, and the
 * decode of whatever verifies, as a runtime with security.signing on runs
 * them for every message from the broker.
 *
 * The keys are fixed (derived from constant seeds), so the seed corpus in
 * tests/fuzz/corpus/verify holds validly signed and MAC'd envelopes; with
 * FUZZ_VERIFY_SEEDS=DIR set, the target writes those seeds into DIR at start. */
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/runtime.h"

static loom_runtime *rx; /* identity "fz", serves probe */
static loom_runtime *tx; /* identity "peer", serves nothing */

static void b64(const unsigned char *bin, size_t n, char *out, size_t cap)
{
    sodium_bin2base64(out, cap, bin, n, sodium_base64_VARIANT_ORIGINAL);
}

static loom_runtime *runtime_for(const char *dir, const char *name)
{
    char key[256], ring[256];
    snprintf(key, sizeof key, "%s/%s.key", dir, name);
    snprintf(ring, sizeof ring, "%s/keyring", dir);
    loom_config *cfg;
    loom_runtime *rt = NULL;
    if (loom_config_create(&cfg) || loom_config_set(cfg, "security.signing", "true") ||
        loom_config_set(cfg, "security.key_file", key) ||
        loom_config_set(cfg, "security.keyring", ring))
        abort();
    loom_runtime_config rc =
        LOOM_RUNTIME_CONFIG_INIT(.config = cfg, .log_level = LOOM_LOG_OFF, .workers = 1);
    if (loom_runtime_create(&rt, &rc) != LOOM_OK)
        abort();
    loom_config_destroy(cfg);
    return rt;
}

static void write_seed(const char *dir, int i, loom_msg *m, bool to_all)
{
    char *data;
    size_t len;
    if (loom_msg_encode(m, &data, &len) || loom__trust_sign(&tx->trust, m, to_all, &data, &len))
        abort();
    char path[512];
    snprintf(path, sizeof path, "%s/seed-%d", dir, i);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
    free(data);
}

static void write_seeds(const char *dir)
{
    loom_msg *m = loom__msg_new(LOOM_MSG_COMMAND);
    loom__msg_set(m, &m->principal_id, "alice");
    loom__msg_set(m, &m->reply_to, "loom/reply/peer-1");
    loom__msg_set_address(m, &m->receiver, "probe", "1", "echo", NULL);
    m->payload = cJSON_Parse("{\"a\":[1,2,{\"b\":\"c\"}]}");
    m->deadline = m->timestamp + 86400000;
    write_seed(dir, 0, m, false); /* MAC */
    write_seed(dir, 1, m, true);  /* Ed25519 */
    loom_msg *r = loom__msg_success_for(m, cJSON_Parse("{\"ok\":true}"));
    write_seed(dir, 2, r, false);
    loom_msg_release(r);
    loom_msg_release(m);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (sodium_init() < 0)
        abort();
    char dir[] = "/tmp/loom-fuzz-verify-XXXXXX";
    if (!mkdtemp(dir))
        abort();
    char path[256], ring[1024] = "";
    const char *names[] = {"fz", "peer"}, *serves[] = {"probe", "-"};
    for (int i = 0; i < 2; i++) {
        unsigned char seed[32], pk[32], sk[64];
        memset(seed, 'A' + i, sizeof seed);
        crypto_sign_seed_keypair(pk, sk, seed);
        char skb[128], pkb[64];
        b64(sk, sizeof sk, skb, sizeof skb);
        b64(pk, sizeof pk, pkb, sizeof pkb);
        snprintf(path, sizeof path, "%s/%s.key", dir, names[i]);
        FILE *f = fopen(path, "w");
        if (!f)
            abort();
        fprintf(f, "%s %s\n", names[i], skb);
        fclose(f);
        if (chmod(path, 0600) != 0) /* a secret key others may read is refused */
            abort();
        size_t n = strlen(ring);
        snprintf(ring + n, sizeof ring - n, "%s %s %s\n", names[i], pkb, serves[i]);
    }
    snprintf(path, sizeof path, "%s/keyring", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        abort();
    fputs(ring, f);
    fclose(f);
    rx = runtime_for(dir, "fz");
    tx = runtime_for(dir, "peer");
    const char *seeds = getenv("FUZZ_VERIFY_SEEDS");
    if (seeds && *seeds)
        write_seeds(seeds);
    /* the keys are in memory now */
    snprintf(path, sizeof path, "%s/fz.key", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/peer.key", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/keyring", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const loom__dir dirs[] = {LOOM__DIR_COMMAND, LOOM__DIR_REPLY, LOOM__DIR_ALL};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        const loom__key *signer;
        size_t signed_len;
        if (loom__trust_verify_bytes(&rx->trust, data, size, dirs[i], &signer, &signed_len) ==
                LOOM_OK &&
            (!signer || signed_len >= size))
            abort();
    }
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        loom_msg *m = NULL;
        char why[160];
        if (loom__trust_decode(&rx->trust, data, size, dirs[i], 0, &m, why, sizeof why) ==
            LOOM_OK) {
            if (!m || !m->verified || !m->signer)
                abort();
            loom_msg_release(m);
        } else if (m) {
            abort();
        }
    }
    return 0;
}
