/* libFuzzer target: the YAML configuration loader and dotted-key sets. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    loom_config *cfg = NULL;
    if (loom_config_create(&cfg) != LOOM_OK)
        return 0;
    if (loom_config_load_string(cfg, (const char *)data, size, "fuzz.yaml") != LOOM_OK &&
        loom_config_error(cfg)[0] == '\0')
        abort(); /* every failure says why */
    /* The same bytes as a value for a few keys of each type. */
    char *text = malloc(size + 1);
    if (text) {
        memcpy(text, data, size);
        text[size] = '\0';
        loom_config_set(cfg, "workers", text);
        loom_config_set(cfg, "services", text);
        loom_config_set(cfg, "http.listen", text);
        loom_config_set(cfg, "config.fuzz", text);
        loom_config_set(cfg, text, "1");
        free(text);
    }
    loom_config_get(cfg, "broker.qos.command");
    loom_config_destroy(cfg);
    return 0;
}
