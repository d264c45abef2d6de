#include "support/support.h"

cJSON *t_json(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    if (!j)
        fail_msg("test JSON does not parse: %s", text);
    return j;
}

int t_json_eq(const cJSON *a, const char *b_text)
{
    cJSON *b = cJSON_Parse(b_text);
    int eq = b && cJSON_Compare(a, b, 1);
    cJSON_Delete(b);
    return eq;
}
