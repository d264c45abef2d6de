/* libFuzzer target: topic escaping (lossless round trip), parsing and
 * matching. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/topic.h"
#include "loom/adapter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char *esc = loom__topic_escape(s);
    if (esc) {
        if (strpbrk(esc, "/+#$"))
            abort(); /* an escaped segment never holds a separator or wildcard */
        char *back = loom__topic_unescape(esc, strlen(esc));
        if (strlen(s) == size && (!back || strcmp(back, s) != 0))
            abort(); /* lossless for every NUL-free input */
        free(back);
        free(esc);
    }
    free(loom__topic_unescape(s, size));
    char *kind = NULL, *segs[4] = {0};
    int n = loom__topic_parse(s, "loom", &kind, segs, 4);
    for (int i = 0; i < n; i++)
        free(segs[i]);
    free(kind);
    const char *half = s + strlen(s) / 2;
    loom_topic_matches(s, half);
    loom_topic_matches(half, s);
    loom__topic_prefix_valid(s);
    free(s);
    return 0;
}
