/* libFuzzer target: the envelope decoder, and encode/decode round trips of
 * whatever it accepts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    loom_msg *m = NULL;
    char why[256];
    if (loom_msg_decode(data, size, &m, why, sizeof why) != LOOM_OK)
        return 0;
    /* Whatever decodes must encode, and decode again to the same text. */
    char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    if (loom_msg_encode(m, &a, &alen) != LOOM_OK)
        abort();
    loom_msg *m2 = NULL;
    if (loom_msg_decode(a, alen, &m2, why, sizeof why) != LOOM_OK)
        abort();
    if (loom_msg_encode(m2, &b, &blen) != LOOM_OK || alen != blen || memcmp(a, b, alen) != 0)
        abort();
    cJSON_Delete(loom_msg_result_json(m));
    loom_free(a);
    loom_free(b);
    loom_msg_release(m2);
    loom_msg_release(m);
    return 0;
}
