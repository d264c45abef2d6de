#include "support/support.h"

#include <locale.h>
#include <stdio.h>
#include <string.h>

void t_comma_locale(void)
{
    if (!setlocale(LC_NUMERIC, "de_DE.UTF-8"))
        fail_msg("locale de_DE.UTF-8 is not installed: run `make deps` (locales-all)");
    char probe[16];
    snprintf(probe, sizeof probe, "%.1f", 0.5);
    if (strcmp(probe, "0,5") != 0)
        fail_msg("de_DE.UTF-8 prints 0.5 as %s, not 0,5", probe);
}

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
