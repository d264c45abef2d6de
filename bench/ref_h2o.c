/* ref_h2o: the h2o side of the HTTP/1.1 A/B (bench/http_ab.py, docs/security.md
 * "h2o A/B"). A minimal single-threaded h2o 2.2.5 (libh2o-evloop, h2o's own
 * event loop) HTTP/1.1 server shaped like the loom bridge's answers:
 *   GET /ping, GET /healthz        -> 200 {"ok":true}
 *   POST /api/v1/hello       -> 200 {"ok":true} (body at most BODY_LIMIT)
 *   a body over BODY_LIMIT         -> 413, JSON
 *   a known path, another method   -> 405, JSON, with Allow
 *   any other path                 -> 404, JSON
 * Every answer a handler can give is the bridge's error body
 * {"status":N,"message":"..."}, and h2o's own errors are routed to it where
 * h2o allows (errordoc, see main); what h2o still answers itself is what the
 * A/B measures. loom is not linked into it.
 *   ref_h2o PORT
 */
#define H2O_USE_EPOLL 1
#include <h2o.h>

#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BODY_LIMIT (1024 * 1024) /* the bridge's limits.max_message */

static h2o_globalconf_t config;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;

static int answer(h2o_req_t *req, int status, const char *reason, const char *body)
{
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = reason;
    req->res.content_length = strlen(body);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_start_response(req, &generator);
    h2o_iovec_t buf = h2o_strdup(&req->pool, body, SIZE_MAX);
    h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
    return 0;
}

static int answer_error(h2o_req_t *req, int status, const char *reason, const char *message)
{
    char body[256];
    snprintf(body, sizeof body, "{\"status\":%d,\"message\":\"%s\"}", status, message);
    return answer(req, status, reason, body);
}

static int is(h2o_iovec_t v, const char *s)
{
    return h2o_memis(v.base, v.len, s, strlen(s));
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    h2o_iovec_t path = req->path_normalized;
    int get = is(req->method, "GET") || is(req->method, "HEAD");
    if (is(path, "/ping") || is(path, "/healthz")) {
        if (!get) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
                           H2O_STRLIT("GET, HEAD"));
            return answer_error(req, 405, "Method Not Allowed", "method not allowed");
        }
        return answer(req, 200, "OK", "{\"ok\":true}");
    }
    if (is(path, "/api/v1/hello")) {
        if (!is(req->method, "POST")) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL,
                           H2O_STRLIT("POST"));
            return answer_error(req, 405, "Method Not Allowed", "method not allowed");
        }
        if (req->entity.len > BODY_LIMIT)
            return answer_error(req, 413, "Payload Too Large", "the body is too large");
        return answer(req, 200, "OK", "{\"ok\":true}");
    }
    /* the error documents h2o's errordoc filter fetches (main) */
    if (path.len == 11 && memcmp(path.base, "/_error/", 8) == 0)
        return answer_error(req, atoi(path.base + 8), "Error", "h2o refused the request");
    return answer_error(req, 404, "Not Found", "no route matches the request");
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    h2o_socket_t *sock;
    if (err || !(sock = h2o_evloop_socket_accept(listener)))
        return;
    h2o_accept(&accept_ctx, sock);
}

static int listen_on(int port)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(0x7f000001);
    addr.sin_port = htons((uint16_t)port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, SOMAXCONN) != 0) {
        perror("ref_h2o: listen");
        return -1;
    }
    h2o_socket_t *sock = h2o_evloop_socket_create(ctx.loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    h2o_socket_read_start(sock, on_accept);
    return 0;
}

int main(int argc, char **argv)
{
    int port = argc == 2 ? atoi(argv[1]) : 0;
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: ref_h2o PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    h2o_config_init(&config);
    /* The handler, not h2o, judges body sizes up to 16 MiB (h2o's own 413
     * answers beyond that). */
    config.max_request_entity_size = 16 * 1024 * 1024;
    h2o_hostconf_t *host =
        h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = on_req;
    /* h2o's own answers to a request it has parsed the head of (a broken
     * body framing: 400; a Content-Length over max_request_entity_size: 413)
     * go through the errordoc filter of the host's fallback path, whose body
     * is then the handler's /_error/N (the status stays h2o's). A request
     * head h2o cannot parse is answered with a fixed text/plain 400 written
     * to the socket, past any filter. */
    static h2o_errordoc_t docs[] = {{400, {H2O_STRLIT("/_error/400")}},
                                    {413, {H2O_STRLIT("/_error/413")}}};
    h2o_errordoc_register(pc, docs, 2);
    h2o_errordoc_register(&host->fallback_path, docs, 2);
    h2o_context_init(&ctx, h2o_evloop_create(), &config);
    accept_ctx.ctx = &ctx;
    accept_ctx.hosts = config.hosts;
    if (listen_on(port) != 0)
        return 1;
    fprintf(stderr, "ref_h2o: listening on 127.0.0.1:%d\n", port);
    while (h2o_evloop_run(ctx.loop, INT32_MAX) == 0)
        ;
    return 0;
}
