/* Shared helpers for loom's tests. */
#ifndef LOOM_TEST_SUPPORT_H
#define LOOM_TEST_SUPPORT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "loom.h"

/* Parses JSON text for a test; fails the test on a parse error. */
cJSON *t_json(const char *text);
/* True when a and b are the same JSON value (text given for b). */
int t_json_eq(const cJSON *a, const char *b_text);
/* Sets LC_NUMERIC to de_DE.UTF-8 (',' as the decimal point) for the whole
 * process, as a host program's setlocale(LC_ALL, "") does in a German
 * locale; fails the test when it is not installed (Debian's locales-all,
 * make deps). Undo with setlocale(LC_NUMERIC, "C"). */
void t_comma_locale(void);

#endif
