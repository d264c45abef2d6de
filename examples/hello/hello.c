/* The smallest useful loom program: a service with one command.
 *   ./hello --call greeter.hello '{"name":"Ada"}'
 *   ./hello --http 127.0.0.1:8080 &
 *   curl -H 'Content-Type: application/json' -d '{"name":"Ada"}' \
 *        http://127.0.0.1:8080/api/v1/hello
 */
#include <stdio.h>

#include <loom.h>

static void hello(loom_ctx *ctx, void *user)
{
    (void)user;
    /* The payload schema has already checked the name. */
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(loom_ctx_payload(ctx), "name");
    char text[1024];
    snprintf(text, sizeof text, "Hello, %s!", name->valuestring);
    cJSON *result = cJSON_CreateObject();
    if (!cJSON_AddStringToObject(result, "message", text) ||
        loom_ctx_reply(ctx, result) != LOOM_OK) {
        cJSON_Delete(result);
        loom_ctx_fail(ctx, 500, "out of memory", NULL);
    }
}

LOOM_COMMAND(hello_cmd, .name = "hello", .description = "Greets someone", .handler = hello,
             .payload_schema = "{\"type\": \"object\", \"required\": [\"name\"],"
                               " \"properties\": {\"name\": {\"type\": \"string\","
                               " \"minLength\": 1, \"maxLength\": 200}}}",
             .http_method = "POST", .http_path = "/hello", .http_public = true);

LOOM_SERVICE(greeter, .name = "greeter", .version = "1", .commands = LOOM_COMMANDS(&hello_cmd));

int main(int argc, char **argv)
{
    return loom_main(argc, argv, LOOM_SERVICES(&greeter));
}
