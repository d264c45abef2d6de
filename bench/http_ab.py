#!/usr/bin/env python3
"""HTTP/1.1 A/B: the loom bridge (libmicrohttpd) vs h2o 2.2.5 (bench/ref_h2o.c).

Sends the raw-socket probes of tests/test_hostile.c
(test_http_errors_libmicrohttpd_answers; POST probes aim at /api/v1/hello,
the route examples/hello has) plus probes beyond h2o's own limits and three
errors a handler answers (404, 405, 413) to both servers, one fresh connection each, and tabulates the first
status line, its Content-Type, whether its body is JSON, how many responses
came back, whether the server closed the connection (within 3 s) and
whether it still serves. Then wrk -t2 -c64 on GET /healthz, RUNS runs
interleaved, medians: the bridge on its default 2 threads, ref_h2o (one
thread) and the bridge on 1 thread (the same thread count as ref_h2o). Output: markdown tables on
stdout (docs/security.md "h2o A/B").

  make bench-httpab       # or, built: python3 bench/http_ab.py [BUILD_DIR]
Environment: AB_SECONDS (wrk duration, 5), AB_RUNS (3). stdlib only.
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build/bench"
SECONDS = int(os.environ.get("AB_SECONDS", "5"))
RUNS = int(os.environ.get("AB_RUNS", "3"))
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
POST = "POST /api/v1/hello HTTP/1.1\r\nHost: t\r\n"

# (name, bytes): tests/test_hostile.c's cases, byte for byte but the POST path.
PROBES = [
    ("no HTTP version", b"GET /healthz\r\nHost: t\r\n\r\n"),
    ("field line without a colon", b"GET /healthz HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n"),
    ("HTTP/2.0 on the wire", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n"),
    ("30 KB header field",
     b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 30000 + b"\r\n\r\n"),
    ("30 KB target", b"GET /healthz?" + b"a" * 30000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("bad chunk size",
     (POST + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
      "zz\r\n{}\r\n0\r\n\r\n").encode()),
    ("Content-Length: abc", (POST + "Content-Length: abc\r\n\r\n").encode()),
    ("Content-Length beyond 2^64",
     (POST + "Content-Length: 99999999999999999999999\r\n\r\n").encode()),
    ("no request line (GARBAGE)", b"GARBAGE\r\n\r\n"),
    # beyond h2o's own limits (its request head may reach about 400 KB;
    # ref_h2o's max_request_entity_size is 16 MiB)
    ("500 KB header field",
     b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 500000 + b"\r\n\r\n"),
    ("500 KB target", b"GET /healthz?" + b"a" * 500000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("Content-Length: 20000000, no body", (POST + "Content-Length: 20000000\r\n\r\n").encode()),
    # answered by a handler in both servers
    ("404 unknown path", b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("405 DELETE /healthz", b"DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
    ("413 2 MB body (limit 1 MiB)",
     (POST + "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n").encode()
     + b"a" * 2000000),
]


def exchange(port, data, timeout=3.0):
    """Sends data on a fresh connection, reads until close or timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
    except OSError:
        pass  # the server may close early: read its answer
    out, closed, end = b"", False, time.monotonic() + timeout
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            r = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not r:
            closed = True
            break
        out += r
    s.close()
    return out, closed


def first_response(raw):
    """(status line, content-type, body is JSON) of the first response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        fields[k.strip().lower()] = v.strip()
    body = rest
    if "content-length" in fields and fields["content-length"].isdigit():
        body = rest[:int(fields["content-length"])]
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        body, b = b"", rest
        while b:
            size, _, b = b.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            body, b = body + b[:n], b[n + 2:]
    try:
        json.loads(body.decode())
        is_json = "yes"
    except ValueError:
        is_json = "no: %r" % body[:30].decode("latin-1") if body else "no (empty)"
    return lines[0] if raw else "(nothing)", fields.get("content-type", "-"), is_json


def wait_port(port, proc):
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError("server exited: %d" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server on %d did not come up" % port)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wrk(port, secs=SECONDS):
    argv = ["wrk", "-t2", "-c64", "-d%ds" % secs, "--timeout", "5s",
            "http://127.0.0.1:%d/healthz" % port]
    out = subprocess.run(argv, capture_output=True, timeout=secs + 30).stdout.decode()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk: " + out)
    return float(m.group(1))


def main():
    lp, hp, l1 = free_port(), free_port(), free_port()
    hello = os.path.join(BUILD, "examples/hello/hello")

    def bridge(port, *extra):
        return subprocess.Popen(
            [hello, "--http", "127.0.0.1:%d" % port, "--log-level", "error",
             "--set", "http.max_connections=4096"] + list(extra),
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = {
        "libmicrohttpd (loom bridge, examples/hello, http.threads=2, the default)": bridge(lp),
        "h2o 2.2.5 (bench/ref_h2o, one thread)": subprocess.Popen(
            [os.path.join(BUILD, "bench/ref_h2o"), str(hp)],
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        # speed only: the bridge on as many threads as ref_h2o
        "libmicrohttpd (loom bridge, examples/hello, http.threads=1)":
            bridge(l1, "--set", "http.threads=1"),
    }
    ports = dict(zip(servers, (lp, hp, l1)))
    probed = list(servers)[:2]
    try:
        for name, p in servers.items():
            wait_port(ports[name], p)
        print("| probe | server | first status line | Content-Type | JSON body |"
              " responses | closed | serves after |")
        print("|---|---|---|---|---|---|---|---|")
        for probe, data in PROBES:
            for name in probed:
                raw, closed = exchange(ports[name], data)
                st, ct, js = first_response(raw)
                after = first_response(exchange(ports[name], HEALTH)[0])[0]
                print("| %s | %s | %s | %s | %s | %d | %s | %s |" % (
                    probe, name.split(" ")[0], st, ct, js, raw.count(b"HTTP/1.1 "),
                    "yes" if closed else "no (3 s)", "yes" if " 200 " in after else after))
        print()
        for name in servers:  # warm-up, unrecorded
            wrk(ports[name], 1)
        res = {n: [] for n in servers}
        for _ in range(RUNS):
            for name in servers:
                res[name].append(wrk(ports[name]))
        med = {n: statistics.median(v) for n, v in res.items()}
        print("| GET /healthz, wrk -t2 -c64 -d%ds, %d runs interleaved | median req/s | runs |"
              % (SECONDS, RUNS))
        print("|---|---|---|")
        for n, v in res.items():
            print("| %s | %.0f | %s |" % (n, med[n], ", ".join("%.0f" % x for x in v)))
        a, b, c = list(med.values())
        print("\nh2o / bridge (2 threads): %.2fx; h2o / bridge (1 thread): %.2fx" % (b / a, b / c))
    finally:
        for p in servers.values():
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
