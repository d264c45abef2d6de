/*
 * users: registers users and looks them up.
 *
 * An email holds no whitespace or control character (no CR/LF to smuggle
 * into a mail header). users.get answers only ids of the form u-N: anything
 * else is 404 without a lookup, so the email index (users:email:...) can
 * never be read through it (GET /users/email:ADDR used to answer 500 for a
 * registered address and 404 otherwise).
 *
 * State store keys:
 *   users:seq              the id counter (ids are "u-1", "u-2", ...)
 *   users:<id>             the user {id, name, email, createdAt}
 *   users:email:<email>    the id owning an email (lowercased): makes emails
 *                          unique even when several instances create at once,
 *                          because loom_store_add is atomic.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

/* Longest email in bytes: the schema's 254 characters may be 4 bytes each,
 * but the index key must stay within the store's 1024-byte key limit. */
#define MAX_EMAIL_BYTES 1000

static const char create_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"name\":  {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 100},"
    "   \"email\": {\"type\": \"string\", \"maxLength\": 254,"
    "              \"pattern\": "
    "\"^[^@\\\\s\\\\x00-\\\\x1f\\\\x7f]+@[^@\\\\s\\\\x00-\\\\x1f\\\\x7f]+"
    "[.][^@\\\\s\\\\x00-\\\\x1f\\\\x7f]+$\"}},"
    " \"required\": [\"name\", \"email\"],"
    " \"additionalProperties\": false}";

static const char id_parameter_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {\"id\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 64}},"
    " \"required\": [\"id\"]}";

static const char user_schema[] =
    "{\"type\": \"object\","
    " \"properties\": {"
    "   \"id\": {\"type\": \"string\"}, \"name\": {\"type\": \"string\"},"
    "   \"email\": {\"type\": \"string\"}, \"createdAt\": {\"type\": \"string\"}},"
    " \"required\": [\"id\", \"name\", \"email\", \"createdAt\"]}";

static cJSON *new_user(const char *id, const char *name, const char *email)
{
    char now[32];
    shop_timestamp(now);
    cJSON *u = cJSON_CreateObject();
    if (!u || !cJSON_AddStringToObject(u, "id", id) || !cJSON_AddStringToObject(u, "name", name) ||
        !cJSON_AddStringToObject(u, "email", email) ||
        !cJSON_AddStringToObject(u, "createdAt", now)) {
        cJSON_Delete(u);
        return NULL;
    }
    return u;
}

/* POST /users {"name", "email"} -> the new user; 409 when the email is taken. */
static void create_user(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *p = loom_ctx_payload(ctx);
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "name"));
    const char *email = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p, "email"));
    /* The payload schema guarantees both; this guards against a schema edit. */
    if (!name || !email) {
        loom_ctx_fail_take(ctx, 400, "name and email are required", NULL);
        return;
    }
    if (strlen(email) > MAX_EMAIL_BYTES) {
        loom_ctx_fail_take(ctx, 400, "email is too long", NULL);
        return;
    }
    char email_key[16 + MAX_EMAIL_BYTES];
    int n = snprintf(email_key, sizeof email_key, "users:email:%s", email);
    for (int i = (int)strlen("users:email:"); i < n; i++)
        email_key[i] = (char)tolower((unsigned char)email_key[i]);

    loom_store *store = loom_ctx_store(ctx);
    char id[32], key[64];
    loom_err err = shop_next_id(store, "users:seq", "u", id, sizeof id);
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "allocate a user id", err);
        return;
    }
    cJSON *id_json = cJSON_CreateString(id);
    cJSON *u = new_user(id, name, email);
    if (!id_json || !u) {
        cJSON_Delete(id_json);
        cJSON_Delete(u);
        loom_ctx_fail_take(ctx, 500, "out of memory", NULL);
        return;
    }
    err = loom_store_add(store, email_key, id_json, 0);
    cJSON_Delete(id_json);
    if (err == LOOM_EEXIST) {
        cJSON_Delete(u);
        loom_ctx_log(ctx, LOOM_LOG_INFO, "email already registered");
        loom_ctx_fail_take(ctx, 409, "email already registered", shop_detail("email", email));
        return;
    }
    snprintf(key, sizeof key, "users:%s", id);
    if (err == LOOM_OK && (err = loom_store_set(store, key, u, 0)) != LOOM_OK)
        loom_store_delete(store, email_key); /* free the email again */
    if (err != LOOM_OK) {
        cJSON_Delete(u);
        shop_fail_store(ctx, "save the user", err);
        return;
    }
    loom_ctx_log(ctx, LOOM_LOG_INFO, "created user %s", id);
    loom_ctx_reply_take(ctx, u);
}

/* "u-" and 1 to 19 digits, the first not 0: what shop_next_id makes. */
static bool is_user_id(const char *id)
{
    if (strncmp(id, "u-", 2) != 0 || id[2] < '1' || id[2] > '9')
        return false;
    size_t n = strspn(id + 2, "0123456789");
    return n <= 19 && id[2 + n] == '\0';
}

/* GET /users/:id -> the user, or 404. */
static void get_user(loom_ctx *ctx, void *user)
{
    (void)user;
    const char *id =
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(loom_ctx_parameter(ctx), "id"));
    char key[128];
    if (!id || !is_user_id(id) || snprintf(key, sizeof key, "users:%s", id) >= (int)sizeof key) {
        loom_ctx_fail_take(ctx, 404, "user not found", shop_detail("id", id));
        return;
    }
    cJSON *u = NULL;
    loom_err err = loom_store_get(loom_ctx_store(ctx), key, &u);
    if (err == LOOM_ENOTFOUND) {
        loom_ctx_fail_take(ctx, 404, "user not found", shop_detail("id", id));
        return;
    }
    if (err != LOOM_OK) {
        shop_fail_store(ctx, "read the user", err);
        return;
    }
    loom_ctx_reply_take(ctx, u);
}

LOOM_COMMAND(create_cmd, .name = "create", .description = "Registers a user",
             .handler = create_user, .payload_schema = create_schema, .output_schema = user_schema,
             .http_method = "POST", .http_path = "/users", .http_public = true,
             .errors = LOOM_ERRORS({409, "The email is already registered",
                                    "{\"type\":\"object\",\"required\":[\"email\"],\"properties\":{"
                                    "\"email\":{\"type\":\"string\"}}}"}));

LOOM_COMMAND(get_cmd, .name = "get", .description = "Returns a user by id", .handler = get_user,
             .parameter_schema = id_parameter_schema, .output_schema = user_schema,
             .http_method = "GET", .http_path = "/users/:id", .http_public = true,
             .errors = LOOM_ERRORS({404, "No user has this id",
                                    "{\"type\":\"object\",\"required\":[\"id\"],\"properties\":{"
                                    "\"id\":{\"type\":\"string\"}}}"}));

LOOM_SERVICE_EXTERN(shop_users, .name = "users", .version = "1", .description = "Shop users",
                    .commands = LOOM_COMMANDS(&create_cmd, &get_cmd));
