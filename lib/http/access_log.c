/* The bridge's access log: one info line per answered request, through the
 * runtime's logger (lib/core/log.c), in its text or JSON format.
 *
 * Cost: nothing when http.access_log is off (send_resp tests one bool) or
 * info is disabled (one compare here); otherwise one snprintf and one
 * write(2) per request, on the thread that answers it. The route is the
 * route's label ("/api/v1/users/{id}"), so identifiers in paths are not
 * logged; a request no route matched logs its raw path (without the query,
 * which may carry secrets). Secrets never appear: no headers, no bodies. */
#include "core/runtime.h"
#include "http/bridge.h"

void loom__http_access_log(const breq *b, int status, int64_t duration_us)
{
    const loom__logger *lg = &b->h->rt->log;
    if (!loom__log_enabled(lg, LOOM_LOG_INFO))
        return;
    loom__log_access a = {
        .method = loom__http_method_names[b->method],
        .route = b->route ? b->route->label : b->path,
        .status = status,
        .duration_us = duration_us,
        .principal = b->principal,
    };
    loom__log_access_line(lg, b->trace, &a);
}
