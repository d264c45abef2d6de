#!/usr/bin/env python3
"""loom benchmarks: every figure as a ratio against a reference measured in
the same run (machines are noisy), each the median of BENCH_REPS (>= 3)
interleaved repetitions: reference, loom, reference, loom, ...

Started by bench/run.sh (`make bench`), which builds the programs first.
Everything listens on 127.0.0.1 only, every process started here is stopped
on exit, and every step is bounded in time.

Environment:
  BENCH_SCALE=F    multiply every measurement's duration by F (default 1;
                   0.3 for a quick smoke run)
  BENCH_REPS=N     repetitions per measurement (default 3, at least 1)
  BENCH_PROFILE=0  skip the perf profiles of missed targets
  BENCH_ONLY=a,b   run only these scenarios (invoke, http, mqtt, nats,
                   events, growth, schema); the document then says so
  BENCH_OUT=PATH   where to write the report (default docs/performance.md)
"""
import datetime
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("BENCH_BUILD", "build/bench"))
OUT = os.path.join(ROOT, os.environ.get("BENCH_OUT", "docs/performance.md"))
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
REPS = max(1, int(os.environ.get("BENCH_REPS", "3")))
PROFILE = os.environ.get("BENCH_PROFILE", "1") != "0"
ONLY = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s]
NPROC = os.cpu_count() or 1
MARKER = "<!-- Everything below this line is kept by bench/run.py; above it is generated. -->"

SHOP = os.path.join(BUILD, "examples/shop/shop")
HELLO = os.path.join(BUILD, "examples/hello/hello")
# The edge build (every WITH_* = 0, docs/abi.md "Build options"); make bench builds it.
MINIMAL = os.path.join(ROOT, os.environ.get("BENCH_MINIMAL", "build/minimal"))
PROG = {n: os.path.join(BUILD, "bench", n)
        for n in ("bench_invoke", "bench_events", "bench_routes", "bench_schema", "ref_mqtt_rr",
                  "ref_nats_rr")}
# The payments request every split measurement sends (reference included).
PAY_BODY = '{"orderId":"o-bench","amount":1}'

T0 = time.monotonic()
TMP = tempfile.mkdtemp(prefix="loom-bench-")
PROCS = []  # every Popen started here, stopped by cleanup()


def secs(base):
    return max(0.5, base * SCALE)


def log(msg):
    sys.stderr.write("[bench %6.1fs] %s\n" % (time.monotonic() - T0, msg))
    sys.stderr.flush()


# --- processes ----------------------------------------------------------------

def start(name, argv, env=None):
    """Starts a background process in its own process group; its output goes
    to TMP/name.log."""
    out = open(os.path.join(TMP, name + ".log"), "wb")
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=e, start_new_session=True)
    out.close()
    p.bench_name = name
    PROCS.append(p)
    return p


def stop(p, timeout=5):
    """SIGTERM, then SIGKILL after timeout, to this process's own group."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def cleanup():
    for p in list(PROCS):
        stop(p, 3)
    shutil.rmtree(TMP, ignore_errors=True)


def on_signal(sig, frame):
    raise SystemExit(128 + sig)


def proc_log(p, limit=1500):
    try:
        with open(os.path.join(TMP, p.bench_name + ".log"), "rb") as f:
            return f.read()[-limit:].decode("utf-8", "replace")
    except OSError:
        return ""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(what, fn, timeout=15, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError("%s exited (%s) while waiting for %s: %s"
                                   % (p.bench_name, p.returncode, what, proc_log(p)))
        try:
            if fn():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def accepts(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, body=None, timeout=5):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def rss_kb(pid):
    """(VmRSS, VmHWM) in KiB from /proc/PID/status."""
    vals = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def top_mappings(pid, n=8):
    """The n mappings of a process with the most resident memory."""
    rows, cur = [], None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    cur = [parts[5] if len(parts) > 5 else "[anon]", 0]
                    rows.append(cur)
                elif line.startswith("Rss:") and cur:
                    cur[1] = int(line.split()[1])
    except OSError:
        return []
    agg = {}
    for name, kb in rows:
        agg[os.path.basename(name) if name.startswith("/") else name] = \
            agg.get(os.path.basename(name) if name.startswith("/") else name, 0) + kb
    return sorted(agg.items(), key=lambda kv: -kv[1])[:n]


def run_jsons(argv, timeout):
    """Runs a bench program; returns its JSON lines by "scenario"."""
    r = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    lines = [json.loads(l) for l in r.stdout.decode().splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv[:3]), r.returncode,
                                                  r.stderr.decode()[-800:]))
    return {l.get("scenario"): l for l in lines}


def run_json(argv, timeout):
    """Runs a bench program; returns its last JSON line as a dict."""
    return list(run_jsons(argv, timeout).values())[-1]


def run_multi(argv, timeout, keys):
    """Runs a bench program printing several scenarios; keys maps each
    scenario name to a measurement key."""
    got = run_jsons(argv, timeout)
    missing = [s for s in keys if s not in got]
    if missing:
        raise RuntimeError("%s printed no %s" % (os.path.basename(argv[0]), ", ".join(missing)))
    return {"_multi": {k: got[s] for s, k in keys.items()}}


# --- wrk -------------------------------------------------------------------------

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _lat_us(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def body_script(body):
    """A wrk Lua script POSTing body (a str) as JSON."""
    path = os.path.join(TMP, "body-%d.json" % len(body))
    with open(path, "w") as f:
        f.write(body)
    script = path + ".lua"
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                'local f = assert(io.open("%s", "rb"))\n'
                'wrk.body = f:read("*a")\nf:close()\n' % path)
    return script


def wrk(url, conns, duration, script=None, threads=None):
    threads = threads or min(2, conns)
    argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % max(1, round(duration)),
            "--latency", "--timeout", "5s"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    r = subprocess.run(argv, capture_output=True, timeout=duration + 30, stdin=subprocess.DEVNULL)
    out = r.stdout.decode()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if r.returncode != 0 or not m:
        raise RuntimeError("wrk failed: " + out[-500:] + r.stderr.decode()[-500:])
    res = {"ops_per_s": float(m.group(1)), "errors": 0}
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        mm = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        res[key] = _lat_us(mm.group(1)) if mm else None
    mm = re.search(r"(\d+) requests in", out)
    res["requests"] = int(mm.group(1)) if mm else 0
    mm = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if mm:
        res["errors"] += int(mm.group(1))
    mm = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if mm:
        res["errors"] += sum(int(x) for x in mm.groups())
    return res


# --- servers ------------------------------------------------------------------------

def start_nginx():
    d = os.path.join(TMP, "nginx")
    os.makedirs(os.path.join(d, "body"), exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""worker_processes auto;
worker_rlimit_nofile 16384;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path %(d)s/body;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:%(port)d;
    default_type application/json;
    location / { return 200 '{"ok":true}'; }
  }
}
""" % {"d": d, "port": port})
    p = start("nginx", ["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf])
    wait_until("nginx", lambda: accepts(port), procs=[p])
    return p, "http://127.0.0.1:%d" % port


def start_mosquitto(tuned=False):
    """mosquitto as users install it: only the listener and anonymous access
    set (plus where it logs and, when started as root, which user it runs
    as); tuned adds set_tcp_nodelay, the one setting users are told to add."""
    port = free_port()
    conf = os.path.join(TMP, "mosquitto%s.conf" % ("-tuned" if tuned else ""))
    with open(conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous true\n%slog_dest stderr\n"
                "log_type error\nlog_type warning\nuser %s\n"
                % (port, "set_tcp_nodelay true\n" if tuned else "",
                   pwd.getpwuid(os.geteuid()).pw_name))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = start("mosquitto", [binary, "-c", conf])
    wait_until("mosquitto", lambda: accepts(port), procs=[p])
    return p, "mqtt://127.0.0.1:%d" % port


def start_nats():
    port = free_port()
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    p = start("nats-server", [binary, "-a", "127.0.0.1", "-p", str(port)])
    wait_until("nats-server", lambda: accepts(port), procs=[p])
    return p, "nats://127.0.0.1:%d" % port


def start_loom(name, prog_argv, http_port=None, ready_path="/readyz"):
    """Starts a loom program (shop, bench_routes) and waits until it is ready."""
    p = start(name, prog_argv)
    if http_port:
        url = "http://127.0.0.1:%d" % http_port
        wait_until(name, lambda: http("GET", url + ready_path)[0] == 200, procs=[p])
    return p


def start_responder(name, argv):
    p = start(name, argv)
    wait_until(name, lambda: "ready" in proc_log(p), procs=[p])
    return p


# --- statistics ---------------------------------------------------------------------

class Results:
    """Samples per measurement key; medians per field."""

    def __init__(self):
        self.samples = {}
        self.failures = {}

    def measure(self, key, fn):
        """fn returns one result, or {"_multi": {key: result, ...}}."""
        try:
            r = fn()
            for k, v in (r["_multi"].items() if "_multi" in r else [(key, r)]):
                self.samples.setdefault(k, []).append(v)
                log("  %-28s %12.0f /s  p99 %s" % (k, v.get("ops_per_s", 0),
                                                  fmt_us(v.get("p99_us"))))
        except Exception as e:  # one failed run must not lose the others
            self.failures[key] = str(e)[:600]
            log("  %-28s FAILED: %s" % (key, str(e)[:300]))

    def interleave(self, items, reps=REPS):
        for _ in range(reps):
            for key, fn in items:
                self.measure(key, fn)

    def med(self, key, field="ops_per_s"):
        vals = [s[field] for s in self.samples.get(key, []) if s.get(field) is not None]
        return statistics.median(vals) if vals else None

    def n(self, key):
        return len(self.samples.get(key, []))

    def errors(self, key):
        return sum(s.get("errors", 0) for s in self.samples.get(key, []))


R = Results()
EXTRA = {}  # footprint, callgrind, profiles, notes


def fmt_rate(v):
    if v is None:
        return "n/a"
    if v >= 1e6:
        return "%.2f M/s" % (v / 1e6)
    if v >= 1e4:
        return "%.1f k/s" % (v / 1e3)
    if v >= 1e3:
        return "%.2f k/s" % (v / 1e3)
    return "%.0f /s" % v


def fmt_us(v):
    if v is None:
        return "n/a"
    if v >= 1e4:
        return "%.1f ms" % (v / 1e3)
    if v >= 1e3:
        return "%.2f ms" % (v / 1e3)
    if v >= 10:
        return "%.0f µs" % v
    return "%.2f µs" % v


def fmt_ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "n/a"


def fmt_kb(kb):
    return "n/a" if kb is None else "%.1f MiB" % (kb / 1024.0)


def fmt_size(n):
    """A file size."""
    return "%.0f KiB" % (n / 1024.0) if n < 1 << 20 else "%.2f MiB" % (n / 1048576.0)


def fmt_bytes(n):
    """A payload size, as the table's row label."""
    if n < 1000:
        return "%d B" % n
    if n < 1000000:
        return "%g KB" % (n / 1000.0)
    return "%.2f MiB" % (n / 1048576.0)


# --- scenario 1: in-process invoke ------------------------------------------------------

def scenario_invoke():
    log("scenario: in-process invoke (memory broker)")
    bi, s = PROG["bench_invoke"], secs(1.0)
    t = str(NPROC)
    R.interleave([
        ("inv.direct", lambda: run_json([bi, str(s), t, "direct"], s + 30)),
        ("inv.call", lambda: run_json([bi, str(s), t, "call"], s + 30)),
        ("inv.call_mt", lambda: run_json([bi, str(s), t, "call_mt"], s + 30)),
        ("inv.invoke", lambda: run_json([bi, str(s), t, "invoke", "--window", "100"], s + 30)),
        ("inv.invoke_pool", lambda: run_json([bi, str(s), t, "invoke", "--window", "100",
                                              "--no-inline"], s + 30)),
    ])
    if not shutil.which("valgrind"):
        EXTRA["callgrind"] = None
        return
    log("  callgrind: instructions per operation")
    n = 20000
    cg = {}
    for scen in ("direct", "call"):
        tot = {}
        for count in (0, n):
            out = os.path.join(TMP, "cg-%s-%d.out" % (scen, count))
            subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                            bi, "0", "1", scen, "--count", str(count)],
                           capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
            with open(out) as f:
                m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M)
            tot[count] = int(m.group(1)) if m else None
        if tot[0] is not None and tot[n] is not None:
            cg[scen] = (tot[n] - tot[0]) / float(n)
    EXTRA["callgrind"] = cg
    EXTRA["callgrind_n"] = n


# --- scenario 2 + 6: HTTP monolithic, footprint ---------------------------------------------

def scenario_http():
    log("scenario: HTTP bridge, monolithic shop vs nginx")
    ngx, ngx_url = start_nginx()
    port = free_port()
    shop = start_loom("shop-mono", [SHOP, "--services", "all", "--http", "127.0.0.1:%d" % port,
                                    "--state", "memory:", "--log-level", "warn",
                                    "--set", "http.max_connections=4096",
                                    "--set", "http.auth.required=false",
                                    "--set", "config.payments.verify_orders=false"], port)
    base = "http://127.0.0.1:%d" % port
    time.sleep(1.0)
    EXTRA["idle_rss_kb"] = rss_kb(shop.pid)[0]
    EXTRA["idle_maps"] = top_mappings(shop.pid)
    st, body = http("POST", base + "/api/v1/users", '{"name":"Ada","email":"ada@example.com"}')
    uid = json.loads(body).get("id") if st == 200 else None
    if not uid:
        raise RuntimeError("cannot create the user: %d %s" % (st, body))
    st, body = http("POST", base + "/api/v1/payments", PAY_BODY)
    if st != 200:
        raise RuntimeError("POST /api/v1/payments answered %d %s" % (st, body))
    get_url = base + "/api/v1/users/" + uid
    post = body_script(PAY_BODY)
    d = secs(5)
    # warm-up, unrecorded
    wrk(ngx_url + "/", 64, 1)
    wrk(get_url, 64, 1)
    R.interleave([
        ("http.nginx.get", lambda: wrk(ngx_url + "/", 64, d)),
        ("http.loom.get", lambda: wrk(get_url, 64, d)),
        ("http.nginx.post", lambda: wrk(ngx_url + "/", 64, d, post)),
        ("http.loom.post", lambda: wrk(base + "/api/v1/payments", 64, d, post)),
        ("http.nginx.get.c1", lambda: wrk(ngx_url + "/", 1, secs(2))),
        ("http.loom.get.c1", lambda: wrk(get_url, 1, secs(2))),
    ])
    EXTRA["load_hwm_kb"] = rss_kb(shop.pid)[1]
    EXTRA["load_maps"] = top_mappings(shop.pid)
    EXTRA["http"] = {"shop": shop, "get_url": get_url, "post_url": base + "/api/v1/payments",
                     "post_script": post, "nginx": ngx, "nginx_url": ngx_url}
    # connections growth against the same two servers (cost-growth table)
    if want("growth"):
        log("growth: concurrent connections")
        for c in (1, 10, 100, 1000):
            R.interleave([
                ("conn.nginx.%d" % c, lambda c=c: wrk(ngx_url + "/", c, secs(2))),
                ("conn.loom.%d" % c, lambda c=c: wrk(get_url, c, secs(2))),
            ])
            EXTRA["conn_hwm.%d" % c] = rss_kb(shop.pid)[1]


def stripped(path):
    """The size of a stripped copy of path."""
    out = os.path.join(TMP, "%d-%s.stripped" % (len(os.listdir(TMP)), os.path.basename(path)))
    subprocess.run(["strip", "-o", out, path], capture_output=True, timeout=60)
    return os.path.getsize(out) if os.path.exists(out) else None


def footprint_sizes():
    sizes = {}
    for label, path in (("libloom.so", os.path.join(BUILD, "libloom.so")),
                        ("libloom.a", os.path.join(BUILD, "libloom.a")),
                        ("hello (libloom.a linked in)", HELLO),
                        ("shop (4 services, libloom.a linked in)", SHOP)):
        real = os.path.realpath(path)
        if os.path.exists(real):
            sizes[label] = (os.path.getsize(real),
                            stripped(real) if not real.endswith(".a") else None)
    EXTRA["sizes"] = sizes


def idle_rss_kb(name, argv):
    """VmRSS of a serving loom program one second after it started."""
    p = start(name, argv)
    time.sleep(1.0)
    rss = rss_kb(p.pid)[0] if p.poll() is None else None
    stop(p)
    return rss


def footprint_minimal():
    """The edge build next to the full one: libloom.so, the statically
    linked hello, and hello's idle RSS (no HTTP, in-memory broker)."""
    m = {}
    for key, build in (("full", BUILD), ("edge", MINIMAL)):
        lib = os.path.realpath(os.path.join(build, "libloom.so"))
        hello = os.path.join(build, "examples/hello/hello")
        if not (os.path.exists(lib) and os.path.exists(hello)):
            continue
        m[key] = {"lib": (os.path.getsize(lib), stripped(lib)),
                  "hello": (os.path.getsize(hello), stripped(hello)),
                  "rss": idle_rss_kb("hello-" + key, [hello, "--log-level", "warn"])}
    EXTRA["minimal"] = m


# --- scenarios 3 + 4: split over MQTT / NATS -------------------------------------------------

# Split kinds: (key, label, broker). "mqtt" is mosquitto as installed (the
# primary rows), "mqtt_tuned" the same with set_tcp_nodelay.
SPLITS = (("mqtt", "MQTT, stock mosquitto"), ("mqtt_tuned", "MQTT, mosquitto + set_tcp_nodelay"),
          ("mqtt_signed", "MQTT, stock mosquitto, signed messages"), ("nats", "NATS"))


def signing_kit():
    """examples/shop/deploy/secure.sh's keys, keyring and per-process YAML for
    payments, the bridge and the bench client (signing on; the broker users it
    also writes are not enforced by the bench's anonymous broker)."""
    d = os.path.join(TMP, "kit")
    if not os.path.isdir(d):
        subprocess.run([os.path.join(ROOT, "examples/shop/deploy/secure.sh"), d, SHOP,
                        "pay-1:payments:payments:orders", "bridge:bridge:-", "bench:bench:-"],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
    return {who: ["--config", os.path.join(d, who + ".yaml")] for who in ("pay-1", "bridge", "bench")}


def scenario_split(kind):
    log("scenario: HTTP bridge split over %s" % kind)
    if kind.startswith("mqtt"):
        broker, url = start_mosquitto(tuned=kind == "mqtt_tuned")
        ref = PROG["ref_mqtt_rr"]
        ref_opts = ["--qos", "0"]  # the plain request/reply pair: QoS 0, like loom's calls
    else:
        broker, url = start_nats()
        ref = PROG["ref_nats_rr"]
        ref_opts = []
    common = ["--broker", url, "--state", "memory:", "--log-level", "warn"]
    kit = signing_kit() if kind == "mqtt_signed" else {}
    pay = start_loom(kind + "-payments", [SHOP, "--services", "payments",
                                          "--set", "config.payments.verify_orders=false"] +
                     kit.get("pay-1", []) + common)
    port = free_port()
    bridge = start_loom(kind + "-bridge", [SHOP, "--services", "none", "--http",
                                           "127.0.0.1:%d" % port,
                                           "--set", "http.auth.required=false"] +
                        kit.get("bridge", []) + common, port)
    post_url = "http://127.0.0.1:%d/api/v1/payments" % port
    wait_until("the payments route on the bridge",
               lambda: http("POST", post_url, PAY_BODY)[0] == 200, procs=[pay, bridge])
    resp = start_responder(kind + "-ref-responder", [ref, "responder", url] + ref_opts)
    post = body_script(PAY_BODY)
    s = secs(1.5)
    bi = PROG["bench_invoke"]
    client = [bi, str(s), "1", "", "--broker", url, "--target", "payments.charge",
              "--body", PAY_BODY] + kit.get("bench", []) + ["--window", ""]

    def cl(scen, window=64):
        argv = list(client)
        argv[3] = scen
        argv[-1] = str(window)
        return run_json(argv, s + 60)

    def rr(inflight):
        return run_json([ref, "requester", url, "--seconds", str(s), "--inflight", str(inflight),
                         "--body", PAY_BODY] + ref_opts, s + 30)

    wrk(post_url, 64, 1, post)  # warm-up
    R.interleave([
        ("%s.ref.1" % kind, lambda: rr(1)),
        ("%s.client.1" % kind, lambda: cl("call")),
        ("%s.http.c1" % kind, lambda: wrk(post_url, 1, s, post)),
        ("%s.ref.64" % kind, lambda: rr(64)),
        ("%s.client.64" % kind, lambda: cl("invoke", 64)),
        ("%s.http.c64" % kind, lambda: wrk(post_url, 64, s, post)),
        ("%s.ref.100" % kind, lambda: rr(100)),
        ("%s.client.100" % kind, lambda: cl("invoke", 100)),
    ])
    EXTRA["%s_hwm" % kind] = {"bridge": rss_kb(bridge.pid)[1], "payments": rss_kb(pay.pid)[1]}
    EXTRA["split_" + kind] = {"bridge": bridge, "payments": pay, "post_url": post_url,
                              "post_script": post, "broker": broker, "responder": resp,
                              "url": url}


def stop_split(kind):
    info = EXTRA.pop("split_" + kind, None)
    if info:
        for k in ("bridge", "payments", "responder", "broker"):
            stop(info[k])


# --- scenario 5: events ------------------------------------------------------------------------

def scenario_events():
    log("scenario: events, in process")
    be, s = PROG["bench_events"], secs(1.0)
    R.interleave([
        ("evt.mem.direct", lambda: run_json([be, "--mode", "direct", "--seconds", str(s)], s + 30)),
        ("evt.mem", lambda: run_multi([be, "--seconds", str(s)], s + 60,
                                      {"events_group_2": "evt.mem.group",
                                       "events_all_2": "evt.mem.all",
                                       "events_stop": "evt.mem.stop"})),
    ])
    for kind in ("mqtt", "nats"):
        if not want(kind):
            continue
        log("scenario: events over %s" % kind)
        if kind == "mqtt":
            broker, url = start_mosquitto()
            ref = PROG["ref_mqtt_rr"]
        else:
            broker, url = start_nats()
            ref = PROG["ref_nats_rr"]
        try:
            R.interleave([
                ("evt.%s.ref" % kind, lambda: run_multi(
                    [ref, "pubsub", url, "--seconds", str(s)], s * 2 + 60,
                    {"%s_pubsub_group_2" % kind: "evt.%s.ref.group" % kind,
                     "%s_pubsub_all_2" % kind: "evt.%s.ref.all" % kind})),
                ("evt.%s" % kind, lambda: run_multi(
                    [be, "--broker", url, "--seconds", str(s)], s * 2 + 60,
                    {"events_group_2": "evt.%s.group" % kind,
                     "events_all_2": "evt.%s.all" % kind,
                     "events_stop": "evt.%s.stop" % kind})),
            ])
        finally:
            stop(broker)


# --- scenario 7: cost growth (payload, routes) ----------------------------------------------------

PAYLOADS = (100, 1000, 10000, 100000)
ROUTES = (1, 10, 100, 1000)


def scenario_growth():
    log("growth: payload size, in process")
    bi, s = PROG["bench_invoke"], secs(1)
    for b in PAYLOADS:
        R.interleave([
            ("pay.direct.%d" % b, lambda b=b: run_json([bi, str(s), "1", "direct", "--bytes", str(b)],
                                                       s + 30)),
            ("pay.call.%d" % b, lambda b=b: run_json([bi, str(s), "1", "call", "--bytes", str(b)],
                                                     s + 30)),
        ])
    log("growth: payload size over HTTP, and number of routes")
    ngx, ngx_url = (EXTRA["http"]["nginx"], EXTRA["http"]["nginx_url"]) if "http" in EXTRA \
        else start_nginx()
    servers = {}
    try:
        for n in ROUTES:
            port = free_port()
            servers[n] = (start_loom("routes-%d" % n, [PROG["bench_routes"], "--routes", str(n),
                                                      "--http", "127.0.0.1:%d" % port,
                                                      "--state", "memory:", "--log-level", "warn"],
                                     port), port)
        d = secs(2)
        # payload: one fresh 1-route server per size, so each peak RSS is its own
        for b in PAYLOADS:
            port = free_port()
            srv = start_loom("echo-%d" % b, [PROG["bench_routes"], "--routes", "1", "--http",
                                             "127.0.0.1:%d" % port, "--state", "memory:",
                                             "--log-level", "warn"], port)
            text = json.dumps({"n": 41, "pad": "x" * max(0, b - 19)}, separators=(",", ":"))
            script = body_script(text)
            url = "http://127.0.0.1:%d/api/v1/echo" % port
            st, _ = http("POST", url, text)
            if st != 200:
                raise RuntimeError("echo answered %d for %d bytes" % (st, b))
            R.interleave([
                ("hpay.nginx.%d" % b, lambda: wrk(ngx_url + "/", 64, d, script)),
                ("hpay.loom.%d" % b, lambda: wrk(url, 64, d, script)),
            ])
            EXTRA["hpay_hwm.%d" % b] = rss_kb(srv.pid)[1]
            stop(srv)
        for n, (p, port) in servers.items():
            EXTRA["routes_idle.%d" % n] = rss_kb(p.pid)[0]
        items = [("routes.nginx", lambda: wrk(ngx_url + "/", 64, d))]
        for n, (p, port) in servers.items():
            items.append(("routes.%d" % n, lambda port=port, n=n: wrk(
                "http://127.0.0.1:%d/api/v1/r%d/42" % (port, n - 1), 64, d)))
        R.interleave(items)
        for n, (p, port) in servers.items():
            EXTRA["routes_hwm.%d" % n] = rss_kb(p.pid)[1]
    finally:
        for p, _ in servers.values():
            stop(p)


# --- scenario 8: JSON Schema validation (issue 14 item 3) --------------------------------------

SCHEMA_DIR = os.path.join(ROOT, "bench/schema")
AJV = os.path.join(SCHEMA_DIR, "ajv")
# bench/schema's copies of the shop's schemas: (file, shop source, C array).
SHOP_SCHEMAS = (("shop-users-create.json", "users.c", "create_schema"),
                ("shop-orders-create.json", "orders.c", "create_schema"),
                ("shop-notifications-list.json", "notifications.c", "list_schema"))


def schema_cases():
    with open(os.path.join(SCHEMA_DIR, "cases.json")) as f:
        return json.load(f)["cases"]


def c_schema(path, name):
    """The JSON of `static const char name[] = "..." "...";` in a C file."""
    with open(path) as f:
        src = f.read()
    m = re.search(r'static const char %s\[\] =\s*((?:"(?:[^"\\]|\\.)*"\s*)+);' % name, src)
    if not m:
        raise RuntimeError("no %s in %s" % (name, path))
    lits = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    return json.loads("".join(l.encode().decode("unicode_escape") for l in lits))


def check_shop_schemas():
    for file, src, name in SHOP_SCHEMAS:
        with open(os.path.join(SCHEMA_DIR, file)) as f:
            copy = json.load(f)
        if copy != c_schema(os.path.join(ROOT, "examples/shop", src), name):
            raise RuntimeError("bench/schema/%s differs from %s in examples/shop/%s: "
                               "copy the shop's schema again" % (file, name, src))


def schema_callgrind(impl, key, n):
    """Instructions per validation: callgrind totals of n validations minus 0."""
    tot = {}
    for count in (0, n):
        out = os.path.join(TMP, "cg-schema-%s-%s-%d.out" % (impl, key, count))
        subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                        PROG["bench_schema"], "--impl", impl, "--dir", SCHEMA_DIR, "--only", key,
                        "--count", str(count)],
                       capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
        with open(out) as f:
            m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.M)
        tot[count] = int(m.group(1)) if m else None
    return None if None in tot.values() else (tot[n] - tot[0]) / float(n)


def scenario_schema():
    log("scenario: JSON Schema validation (loom, the old validator, ajv)")
    check_shop_schemas()
    if not os.path.isdir(os.path.join(AJV, "node_modules", "ajv")):
        raise RuntimeError("bench: ajv is not installed in %s (make bench runs npm ci)" % AJV)
    cases = schema_cases()
    s = secs(1.5)
    bs = PROG["bench_schema"]

    def keys(impl):
        return {"schema.%s.%s" % (impl, c["key"]): "schema.%s.%s" % (impl, c["key"])
                for c in cases if impl != "ref" or c["ref"]}

    R.interleave([
        ("schema.ref", lambda: run_multi([bs, "--impl", "ref", "--dir", SCHEMA_DIR,
                                          "--seconds", str(s)], s * 20 + 60, keys("ref"))),
        ("schema.loom", lambda: run_multi([bs, "--impl", "loom", "--dir", SCHEMA_DIR,
                                           "--seconds", str(s)], s * 20 + 60, keys("loom"))),
        ("schema.ajv", lambda: run_multi(["node", os.path.join(AJV, "bench.js"), "--dir",
                                          SCHEMA_DIR, "--seconds", str(s)], s * 20 + 60,
                                         keys("ajv"))),
    ])
    if shutil.which("valgrind"):
        log("  callgrind: instructions per validation")
        cg = {}
        for c in cases:
            for impl in ("loom", "ref") if c["ref"] else ("loom",):
                cg["%s.%s" % (impl, c["key"])] = schema_callgrind(impl, c["key"], 200)
        EXTRA["schema_cg"] = cg


def schema_target_rows(add):
    for c in schema_cases():
        l = R.med("schema.loom." + c["key"])
        if c["ref"]:
            ref = R.med("schema.ref." + c["key"])
            add("schema validation, %s: ≥ 1.0× the old validator" % c["name"], fmt_rate(l),
                fmt_rate(ref), fmt_ratio(l, ref), None if not l or not ref else l / ref >= 1.0,
                "schema")
        ajv = R.med("schema.ajv." + c["key"])
        add("schema validation, %s: ≥ 1.0× ajv (aim)" % c["name"], fmt_rate(l), fmt_rate(ajv),
            fmt_ratio(l, ajv), None if not l or not ajv else l / ajv >= 1.0, "schema")


def schema_table():
    cg = EXTRA.get("schema_cg", {})
    lines = [row(["schema, payload", "loom", "old validator", "loom / old", "ajv", "loom / ajv",
                  "instructions loom / old"]),
             row(["---"] * 7)]

    def ns(key):
        v = R.med(key, "ns_per_op")
        return "n/a" if v is None else "%.2f µs" % (v / 1e3)

    for c in schema_cases():
        k = c["key"]
        l, ref, ajv = (R.med("schema.%s.%s" % (i, k)) for i in ("loom", "ref", "ajv"))
        if l is None:
            continue
        il, ir = cg.get("loom." + k), cg.get("ref." + k)
        lines.append(row([c["name"], ns("schema.loom." + k),
                          ns("schema.ref." + k) if c["ref"] else "(no $ref / oneOf)",
                          fmt_ratio(l, ref) if c["ref"] else "", ns("schema.ajv." + k),
                          fmt_ratio(l, ajv),
                          ("%.0f / %s" % (il, "%.0f" % ir if ir else "–")) if il else "n/a"]))
    return lines


# --- profiles of missed targets -----------------------------------------------------------------------

def perf_ok():
    return PROFILE and shutil.which("perf") is not None


def perf_report(data):
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                        "--sort", "dso,symbol", "--percent-limit", "1.5", "-g", "none"],
                       capture_output=True, timeout=120)
    lines = [l.rstrip() for l in r.stdout.decode("utf-8", "replace").splitlines()
             if l.strip() and not l.startswith("#")]
    return "\n".join(lines[:18])


def perf_pids(pids, seconds, load):
    """Profiles pids for `seconds` while load() runs."""
    data = os.path.join(TMP, "perf-%d.data" % pids[0])
    p = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-o", data, "-p",
                          ",".join(str(x) for x in pids), "--", "sleep", str(seconds)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    p.bench_name = "perf"
    PROCS.append(p)
    try:
        load()
    finally:
        try:
            p.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            pass
        stop(p)
    return perf_report(data) if os.path.exists(data) else "(perf recorded nothing)"


def profile_invoke(scenario=("call",), threads=1):
    data = os.path.join(TMP, "perf-invoke.data")
    subprocess.run(["perf", "record", "-F", "1999", "-g", "-o", data, "--",
                    PROG["bench_invoke"], "2", str(threads)] + list(scenario),
                   capture_output=True, timeout=120)
    return perf_report(data) if os.path.exists(data) else "(perf recorded nothing)"


# --- the report ---------------------------------------------------------------------------------------

def want(name):
    return not ONLY or name in ONLY


def cmd_out(argv, stderr=False):
    try:
        r = subprocess.run(argv, capture_output=True, timeout=20)
        text = (r.stderr if stderr else r.stdout).decode("utf-8", "replace").strip()
        return text.splitlines()[0] if text else "?"
    except Exception:
        return "not installed"


def machine():
    model, mem = "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1048576.0)
                    break
    except OSError:
        pass
    return {"nproc": NPROC, "cpu": model, "memory": mem, "kernel": os.uname().release}


def versions():
    v = {}
    try:
        with open(os.path.join(ROOT, "include/loom/version.h")) as f:
            m = re.search(r'LOOM_VERSION_STRING "([^"]+)"', f.read())
            v["loom"] = m.group(1) if m else "?"
    except OSError:
        v["loom"] = "?"
    commit = cmd_out(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    v["loom"] += " (%s)" % commit
    v["gcc"] = cmd_out(["gcc", "--version"])
    v["mosquitto"] = cmd_out([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"])
    v["nginx"] = cmd_out(["nginx", "-v"], stderr=True)
    v["nats-server"] = cmd_out([shutil.which("nats-server") or "/usr/sbin/nats-server",
                                "--version"])
    v["wrk"] = cmd_out(["wrk", "-v"]) if shutil.which("wrk") else "not installed"
    v["valgrind"] = cmd_out(["valgrind", "--version"])
    for pkg in ("libmicrohttpd12", "libpaho-mqtt1.3", "libnats3.4", "libcjson1"):
        v[pkg] = cmd_out(["dpkg-query", "-W", "-f", "${Version}", pkg])
    return v


def row(cells):
    return "| " + " | ".join(cells) + " |"


def target_rows():
    """(target, measured, reference, ratio, verdict, profile key)."""
    rows = []

    def add(name, measured, ref, ratio, ok, prof):
        verdict = "n/a" if ok is None else ("MET" if ok else "MISSED")
        rows.append((name, measured, ref, ratio, verdict, prof))

    call, direct = R.med("inv.call"), R.med("inv.direct")
    add("in-process invoke ≥ 1,000,000/s on one core", fmt_rate(call), "1 M/s",
        fmt_ratio(call, 1e6), None if call is None else call >= 1e6, "invoke")
    add("in-process invoke ≤ 3× the direct call (cost)", "%s per call" % (
        fmt_us(1e6 / call) if call else "n/a"), "%s per call" % (
        fmt_us(1e6 / direct) if direct else "n/a"),
        "%s×" % fmt_ratio(direct, call), None if not call or not direct else direct / call <= 3,
        "invoke")
    for verb in ("get", "post"):
        l, n = R.med("http.loom.%s" % verb), R.med("http.nginx.%s" % verb)
        add("HTTP monolithic %s ≥ 70%% of nginx req/s" % verb.upper(), fmt_rate(l), fmt_rate(n),
            fmt_ratio(l, n), None if not l or not n else l / n >= 0.7, "http." + verb)
        lp, np_ = R.med("http.loom.%s" % verb, "p99_us"), R.med("http.nginx.%s" % verb, "p99_us")
        add("HTTP monolithic %s p99 ≤ 2× nginx" % verb.upper(), fmt_us(lp), fmt_us(np_),
            "%s×" % fmt_ratio(lp, np_), None if not lp or not np_ else lp / np_ <= 2,
            "http." + verb)
    def ratio_target(name, key, refkey, floor, prof):
        l, ref = R.med(key), R.med(refkey)
        add(name, fmt_rate(l), fmt_rate(ref), fmt_ratio(l, ref),
            None if not l or not ref else l / ref >= floor, prof)

    ratio_target("sequential call over stock mosquitto ≥ 0.7× the raw QoS 0 pair",
                 "mqtt.client.1", "mqtt.ref.1", 0.7, "split.mqtt")
    p99 = R.med("mqtt.client.1", "p99_us")
    add("sequential call over stock mosquitto: p99 ≤ 1 ms", fmt_us(p99), "1 ms",
        fmt_ratio(p99, 1000), None if p99 is None else p99 <= 1000, "split.mqtt")
    for n in (64, 100):
        ratio_target("%d in flight over stock mosquitto ≥ 0.8× the raw pair" % n,
                     "mqtt.client.%d" % n, "mqtt.ref.%d" % n, 0.8, "split.mqtt")
    ratio_target("HTTP split over stock mosquitto (wrk -c64) ≥ 0.8× the raw pair at 64",
                 "mqtt.http.c64", "mqtt.ref.64", 0.8, "split.mqtt")
    for n in (64, 100):
        ratio_target("%d in flight over NATS ≥ 0.6× raw nats.c request/reply" % n,
                     "nats.client.%d" % n, "nats.ref.%d" % n, 0.6, "split.nats")
    ratio_target("HTTP split over NATS (wrk -c64) ≥ 0.5× raw nats.c at 64", "nats.http.c64",
                 "nats.ref.64", 0.5, "split.nats")
    for key, what in (("client.1", "sequential call"), ("client.64", "64 in flight"),
                      ("http.c64", "HTTP split, wrk -c64")):
        on, off = R.med("mqtt_signed." + key), R.med("mqtt." + key)
        add("signing costs ≤ 10%% of the split rate: %s (signed / unsigned)" % what,
            fmt_rate(on), fmt_rate(off), fmt_ratio(on, off),
            None if not on or not off else on / off >= 0.9, "split.mqtt")
    stop_s = R.med("evt.mqtt.stop", "stop_s")
    add("graceful stop of idle MQTT instances (3 at once) ≤ 0.5 s",
        "n/a" if stop_s is None else "%.2f s" % stop_s, "0.5 s",
        "n/a" if stop_s is None else "%.2f" % (stop_s / 0.5),
        None if stop_s is None else stop_s <= 0.5, "stop.mqtt")
    # issue 10 (speed)
    inv = R.med("inv.invoke")
    add("in-process async invoke (100 in flight) ≥ 0.8× the blocking call", fmt_rate(inv),
        fmt_rate(call), fmt_ratio(inv, call), None if not inv or not call else inv / call >= 0.8,
        "invoke.async")
    add("in-process blocking call ≥ 4 M/s", fmt_rate(call), "4 M/s", fmt_ratio(call, 4e6),
        None if call is None else call >= 4e6, "invoke")
    for verb, want_ratio in (("get", 0.9), ("post", 0.8)):
        l, n = R.med("http.loom.%s" % verb), R.med("http.nginx.%s" % verb)
        add("HTTP monolithic %s ≥ %d%% of nginx req/s" % (verb.upper(), want_ratio * 100),
            fmt_rate(l), fmt_rate(n), fmt_ratio(l, n),
            None if not l or not n else l / n >= want_ratio, "http." + verb)
    idle, hwm = EXTRA.get("idle_rss_kb"), EXTRA.get("load_hwm_kb")
    add("idle RSS of the monolithic shop ≤ 8 MiB", fmt_kb(idle), "8 MiB",
        fmt_ratio(idle, 8192), None if idle is None else idle <= 8192, "rss.idle")
    add("RSS under the HTTP load ≤ 32 MiB", fmt_kb(hwm), "32 MiB", fmt_ratio(hwm, 32768),
        None if hwm is None else hwm <= 32768, "rss.load")
    schema_target_rows(add)  # issue 14 item 3
    return rows


def main_table():
    lines = [row(["scenario", "loom", "reference", "loom / ref", "loom p50", "loom p99",
                  "ref p50", "ref p99"]),
             row(["---"] * 8)]

    def add(label, key, refkey, reflabel, lat=True):
        l, r = R.med(key), R.med(refkey)
        if l is None and r is None:
            return
        err = R.errors(key)
        note = " (%d errors)" % err if err else ""
        lines.append(row([label, fmt_rate(l) + note, "%s (%s)" % (fmt_rate(r), reflabel),
                          fmt_ratio(l, r),
                          fmt_us(R.med(key, "p50_us")) if lat else "",
                          fmt_us(R.med(key, "p99_us")) if lat else "",
                          fmt_us(R.med(refkey, "p50_us")) if lat else "",
                          fmt_us(R.med(refkey, "p99_us")) if lat else ""]))

    add("in-process call, 1 thread (blocking)", "inv.call", "inv.direct", "direct call")
    add("in-process call, %d threads" % NPROC, "inv.call_mt", "inv.direct", "direct, 1 thread")
    add("in-process invoke, async, up to 100 in flight", "inv.invoke", "inv.call",
        "blocking call")
    add("in-process invoke, async, up to 100 in flight, invoke.inline false", "inv.invoke_pool",
        "inv.call", "blocking call")
    add("HTTP monolithic GET /api/v1/users/:id, wrk -t2 -c64", "http.loom.get", "http.nginx.get",
        "nginx")
    add("HTTP monolithic POST /api/v1/payments, wrk -t2 -c64", "http.loom.post",
        "http.nginx.post", "nginx")
    add("HTTP monolithic GET, wrk -t1 -c1 (latency)", "http.loom.get.c1", "http.nginx.get.c1",
        "nginx")
    for kind, name in SPLITS:
        ref = "raw %s" % ("paho QoS 0 rr" if kind.startswith("mqtt") else "nats.c rr")
        add("split over %s: HTTP POST via bridge, wrk -c1" % name, "%s.http.c1" % kind,
            "%s.ref.1" % kind, ref + ", sequential")
        add("split over %s: loom_runtime_call, sequential" % name, "%s.client.1" % kind,
            "%s.ref.1" % kind, ref + ", sequential")
        add("split over %s: HTTP POST via bridge, wrk -c64" % name, "%s.http.c64" % kind,
            "%s.ref.64" % kind, ref + ", 64 in flight")
        for n in (64, 100):
            add("split over %s: loom_runtime_invoke, %d in flight" % (name, n),
                "%s.client.%d" % (kind, n), "%s.ref.%d" % (kind, n),
                "%s, %d in flight" % (ref, n))
    add("events in process, one per group (2 instances)", "evt.mem.group", "evt.mem.direct",
        "direct call", False)
    add("events in process, every instance (2 instances)", "evt.mem.all", "evt.mem.direct",
        "direct call", False)
    for kind, name, ref in (("mqtt", "MQTT", "raw paho QoS 1"), ("nats", "NATS", "raw nats.c")):
        add("events over %s, one per group (2 instances)" % name, "evt.%s.group" % kind,
            "evt.%s.ref.group" % kind, ref + ", shared sub", False)
        add("events over %s, every instance (2 instances)" % name, "evt.%s.all" % kind,
            "evt.%s.ref.all" % kind, ref + ", 2 subscribers", False)
    return lines


def growth_table():
    lines = [row(["dimension", "value", "loom", "reference", "loom / ref", "loom p99",
                  "peak RSS (loom)"]),
             row(["---"] * 7)]
    for b in PAYLOADS:
        if R.n("pay.call.%d" % b):
            lines.append(row(["payload, in-process call", fmt_bytes(b),
                              fmt_rate(R.med("pay.call.%d" % b)),
                              fmt_rate(R.med("pay.direct.%d" % b)) + " (direct)",
                              fmt_ratio(R.med("pay.call.%d" % b), R.med("pay.direct.%d" % b)),
                              fmt_us(R.med("pay.call.%d" % b, "p99_us")),
                              fmt_kb(max(s.get("maxrss_kb", 0) for s in
                                         R.samples["pay.call.%d" % b]))]))
    for b in PAYLOADS:
        if R.n("hpay.loom.%d" % b):
            lines.append(row(["payload, HTTP POST (wrk -c64)", fmt_bytes(b),
                              fmt_rate(R.med("hpay.loom.%d" % b)),
                              fmt_rate(R.med("hpay.nginx.%d" % b)) + " (nginx)",
                              fmt_ratio(R.med("hpay.loom.%d" % b), R.med("hpay.nginx.%d" % b)),
                              fmt_us(R.med("hpay.loom.%d" % b, "p99_us")),
                              fmt_kb(EXTRA.get("hpay_hwm.%d" % b))]))
    one = R.med("routes.1")
    for n in ROUTES:
        if R.n("routes.%d" % n):
            lines.append(row(["routes (GET the last one, wrk -c64)", str(n),
                              fmt_rate(R.med("routes.%d" % n)),
                              "%s (nginx); %s (1 route)" % (fmt_rate(R.med("routes.nginx")),
                                                            fmt_rate(one)),
                              "%s; %s" % (fmt_ratio(R.med("routes.%d" % n), R.med("routes.nginx")),
                                          fmt_ratio(R.med("routes.%d" % n), one)),
                              fmt_us(R.med("routes.%d" % n, "p99_us")),
                              "%s (idle %s)" % (fmt_kb(EXTRA.get("routes_hwm.%d" % n)),
                                                fmt_kb(EXTRA.get("routes_idle.%d" % n)))]))
    for c in (1, 10, 100, 1000):
        if R.n("conn.loom.%d" % c):
            err = R.errors("conn.loom.%d" % c)
            lines.append(row(["concurrent HTTP connections (GET user)", str(c),
                              fmt_rate(R.med("conn.loom.%d" % c)) +
                              (" (%d errors)" % err if err else ""),
                              fmt_rate(R.med("conn.nginx.%d" % c)) + " (nginx)",
                              fmt_ratio(R.med("conn.loom.%d" % c), R.med("conn.nginx.%d" % c)),
                              fmt_us(R.med("conn.loom.%d" % c, "p99_us")),
                              fmt_kb(EXTRA.get("conn_hwm.%d" % c))]))
    return lines


def footprint_lines():
    lines = [row(["what", "size"]), row(["---", "---"])]
    lines.append(row(["idle RSS, shop `--services all --http` (VmRSS 1 s after ready)",
                      fmt_kb(EXTRA.get("idle_rss_kb"))]))
    lines.append(row(["peak RSS under the HTTP load (VmHWM after scenario 2)",
                      fmt_kb(EXTRA.get("load_hwm_kb"))]))
    for kind in ("mqtt", "nats"):
        h = EXTRA.get("%s_hwm" % kind)
        if h:
            lines.append(row(["peak RSS split over %s: bridge / payments" % kind.upper(),
                              "%s / %s" % (fmt_kb(h["bridge"]), fmt_kb(h["payments"]))]))
    for label, (size, strip) in EXTRA.get("sizes", {}).items():
        lines.append(row([label, fmt_size(size) + (" (stripped: %s)" % fmt_size(strip)
                                                   if strip else "")]))
    m = EXTRA.get("minimal", {})
    if "edge" in m:
        edge = "edge build (`WITH_MQTT=0 WITH_NATS=0 WITH_REDIS=0 WITH_HTTP=0`)"
        for what, label in (("lib", "libloom.so"), ("hello", "hello (libloom.a linked in)")):
            size, strip = m["edge"][what]
            lines.append(row(["%s: %s" % (edge, label),
                              fmt_size(size) + (" (stripped: %s)" % fmt_size(strip) if strip else "")]))
        full = m.get("full", {}).get("rss")
        lines.append(row(["idle RSS, hello (VmRSS 1 s after start): edge build / full build",
                          "%s / %s" % (fmt_kb(m["edge"]["rss"]), fmt_kb(full))]))
    return lines


def write_report(rows, started, wall):
    m, v = machine(), versions()
    out = []
    out.append("# Performance")
    out.append("")
    out.append("Generated by `make bench` (bench/run.sh → bench/run.py) on %s in %.0f s. "
               "Every figure is the **median of %d runs**, and every loom figure is shown "
               "as a **ratio against a reference measured in the same run**, interleaved "
               "(reference, loom, reference, loom, ...), because these machines are noisy: "
               "compare ratios across machines, not absolute numbers. Everything runs on "
               "127.0.0.1." % (started, wall, REPS))
    out.append("")
    cmd = "make bench"
    overrides = " ".join("%s=%s" % (k, os.environ[k]) for k in sorted(os.environ)
                         if k.startswith("BENCH_") and k != "BENCH_BUILD")
    if overrides:
        cmd = overrides + " " + cmd
    out.append("- command: `%s` (release build: `-O2`, no sanitizers, in build/bench)" % cmd)
    out.append("- machine: %d CPUs (%s), %s memory, Linux %s" % (m["nproc"], m["cpu"], m["memory"],
                                                                 m["kernel"]))
    out.append("- versions: " + "; ".join("%s %s" % (k, val) for k, val in v.items()))
    if ONLY:
        out.append("- **partial run**: only " + ", ".join(ONLY))
    if SCALE != 1:
        out.append("- **durations scaled by %.2f** (BENCH_SCALE)" % SCALE)
    out.append("")
    out.append("## Targets (issues 5, 10 and 14)")
    out.append("")
    out.append(row(["target", "loom", "reference", "ratio", "verdict"]))
    out.append(row(["---"] * 5))
    for name, meas, ref, ratio, verdict, _ in rows:
        out.append(row([name, meas, ref, ratio, "**%s**" % verdict]))
    out.append("")
    out.append("## Main scenarios")
    out.append("")
    out.extend(main_table())
    out.append("")
    stops = [(name, R.med("evt.%s.stop" % k, "stop_s")) for k, name in
             (("mem", "in process"), ("mqtt", "MQTT"), ("nats", "NATS"))]
    stops = [(n, v) for n, v in stops if v is not None]
    if stops:
        out.append("Stopping the 3 event instances at once (`loom_runtime_destroy` in parallel, "
                   "drain timeout 1 s): " + ", ".join("%s %.2f s" % (n, v) for n, v in stops) +
                   ".")
        out.append("")
    cg = EXTRA.get("callgrind")
    if cg:
        out.append("Instructions per operation (`valgrind --tool=callgrind`, %d calls minus 0 "
                   "calls, divided; deterministic): loom_runtime_call **%.0f**, the direct call "
                   "%.0f (%.2f×)." % (EXTRA["callgrind_n"], cg.get("call", 0),
                                       cg.get("direct", 0),
                                       cg.get("call", 0) / cg["direct"] if cg.get("direct") else 0))
        out.append("")
    if R.n("schema.loom." + schema_cases()[0]["key"]):
        out.append("## JSON Schema validation (issue 14 item 3)")
        out.append("")
        out.append("Time per `validate` of a parsed payload (median); instructions per "
                   "validation from callgrind (200 minus 0 validations, deterministic).")
        out.append("")
        out.extend(schema_table())
        out.append("")
    out.append("## Footprint")
    out.append("")
    out.extend(footprint_lines())
    maps = EXTRA.get("load_maps")
    if maps:
        out.append("")
        out.append("Largest resident mappings of the shop after the HTTP load: " +
                   ", ".join("%s %s" % (name, fmt_kb(kb)) for name, kb in maps) + ".")
    out.append("")
    out.append("## Cost growth (issue 5 item 3)")
    out.append("")
    out.extend(growth_table())
    out.append("")
    profs = EXTRA.get("profiles", {})
    if profs:
        out.append("## Profiles of the missed targets (this run)")
        out.append("")
        out.append("`perf record -g` on the loom process(es) during the measurement; self time "
                   "by shared object and symbol, above 1.5%. What bounds each, and what would "
                   "move it, is discussed in the analysis below.")
        out.append("")
        for key, text in profs.items():
            out.append("### %s" % key)
            out.append("")
            out.append("```")
            out.append(text)
            out.append("```")
            out.append("")
    if R.failures:
        out.append("## Failed measurements")
        out.append("")
        for k, e in R.failures.items():
            out.append("- `%s`: %s" % (k, e.replace("\n", " ")[:400]))
        out.append("")
    out.append("## How each figure is measured")
    out.append("")
    out.append("""- **In-process invoke**: `bench/bench_invoke` with the memory broker. The
  reference (`direct`) duplicates the request payload, calls the handler's work
  and frees both; `call` does the same through `loom_runtime_call` (inline on the
  caller's thread); `call_mt` on every CPU at once; `invoke` keeps up to 100
  `loom_runtime_invoke` calls in flight (topped up when a quarter are
  answered), compared with the blocking call of the same run: by default the
  quick command runs inline on the caller (docs/concepts.md, "Where handlers
  run"), and with `--no-inline` (`invoke.inline: false`) on the worker pool.
  Every 64th call is timed for p50/p99.
- **HTTP monolithic**: `shop --services all --http --state memory: --log-level warn`
  (request logging off, as nginx's `access_log off`), against nginx
  `return 200 '{"ok":true}'` with `default_type application/json`,
  `worker_processes auto`, `keepalive_requests` unlimited. `wrk -t2 -c64 -d5s
  --latency` for both; POST runs send `{"orderId":"o-bench","amount":1}` with a
  Lua script to both (the payment exists, so loom answers the stored one, 200).
- **Split**: mosquitto or nats-server on loopback, as installed: mosquitto with
  only `listener` and `allow_anonymous` set (the primary rows), and again with
  `set_tcp_nodelay true` (the "tuned" rows); nats-server with its defaults. A
  payments process (`shop --services payments`) and a bridge process
  (`shop --services none --http`). The references (`bench/ref_mqtt_rr`,
  `bench/ref_nats_rr`) are a plain paho MQTT 5 (QoS 0, like loom's commands and
  replies, TCP_NODELAY set like loom does) or nats.c request/reply pair through
  the same broker with the same payload: a responder echoing on the response
  topic and a requester with 1, 64 or 100 requests in flight. loom is measured twice: through
  HTTP (wrk against the bridge) and with a loom client process calling
  `payments.charge` (`bench_invoke --broker URL --target payments.charge`).
- **Events**: `bench/bench_events`: 2 subscriber instances (runtimes) and one
  publisher on one broker, the publisher keeping at most 256 deliveries
  outstanding; only delivered events are counted. The MQTT/NATS references do the
  same with plain clients (a shared subscription / queue group for "one per
  group", plain subscriptions for "every instance").
- **Footprint**: VmRSS from /proc/PID/status one second after the shop is ready;
  VmHWM after the HTTP runs; file sizes, and sizes after `strip`. The edge build
  (docs/abi.md, "Build options") is build/minimal, built by `make bench`; its
  hello and the full build's run idle (in-memory broker, no HTTP) for the RSS row.
- **Growth**: payload `{"n":41,"pad":"xx.."}` of the given size; routes: a service
  with N generated `GET /r{i}/:id` commands (`bench/bench_routes`), wrk asking for
  the last one; connections: the GET user endpoint and nginx with wrk -c1..-c1000
  (`ulimit -n` raised, `http.max_connections=4096`).
- **JSON Schema validation**: `bench/bench_schema` (loom, and with `--impl ref`
  the validator before the draft 2020-12 rewrite, built from git at the
  Makefile's SCHEMA_REF_REV) and `bench/schema/ajv/bench.js` (ajv 8 compiled,
  `new Ajv2020({strict: false})` + ajv-formats, installed by `npm ci`) on the
  cases of bench/schema/cases.json: the payload parsed once, a warm-up, three
  timed rounds, the median; validation stops at the first error in all three.""")
    out.append("")
    generated = "\n".join(out) + "\n"
    kept = ""
    if os.path.exists(OUT):
        with open(OUT) as f:
            old = f.read()
        if MARKER in old:
            kept = old.split(MARKER, 1)[1]
    if not kept.strip():
        kept = "\n\n## Analysis\n\n(Written by hand after reading the profiles above; " \
               "kept across runs.)\n"
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(generated + "\n" + MARKER + kept)
    return generated


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    missing = [p for p in list(PROG.values()) + [SHOP, HELLO] if not os.path.exists(p)]
    if missing:
        sys.exit("bench: build first (make bench): missing " + ", ".join(missing))
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit("bench: %s is not installed (make bench installs it)" % tool)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        if want("invoke"):
            scenario_invoke()
        footprint_sizes()
        footprint_minimal()
        if want("http"):
            scenario_http()
        for kind, _ in SPLITS:
            if want(kind.split("_")[0]):
                try:
                    scenario_split(kind)
                except Exception as e:
                    R.failures["split." + kind] = str(e)[:600]
                    log("split over %s FAILED: %s" % (kind, e))
                    stop_split(kind)
        rows = target_rows()
        missed = {r[5] for r in rows if r[4] == "MISSED"}
        profs = {}
        if perf_ok() and missed:
            log("profiling the missed targets: " + ", ".join(sorted(missed)))
            try:
                if "invoke" in missed:
                    profs["in-process call (bench_invoke call, 1 thread)"] = profile_invoke()
                if "invoke.async" in missed:
                    profs["in-process invoke (bench_invoke invoke --window 100)"] = \
                        profile_invoke(("invoke", "--window", "100"), NPROC)
                h = EXTRA.get("http")
                for verb in ("get", "post"):
                    if h and "http." + verb in missed:
                        url = h["get_url"] if verb == "get" else h["post_url"]
                        scr = None if verb == "get" else h["post_script"]
                        profs["HTTP monolithic %s (shop process)" % verb.upper()] = perf_pids(
                            [h["shop"].pid], 4, lambda: wrk(url, 64, 5, scr))
                for kind in ("mqtt", "nats"):  # the primary rows
                    sp = EXTRA.get("split_" + kind)
                    if sp and "split." + kind in missed:
                        profs["split over %s: bridge + payments processes" % kind.upper()] = \
                            perf_pids([sp["bridge"].pid, sp["payments"].pid], 4,
                                      lambda: wrk(sp["post_url"], 64, 5, sp["post_script"]))
            except Exception as e:
                profs["error"] = "profiling failed: %s" % e
        EXTRA["profiles"] = profs
        for kind, _ in SPLITS:
            stop_split(kind)
        if want("events"):
            scenario_events()
        if want("growth"):
            scenario_growth()
        if want("schema"):
            try:
                scenario_schema()
            except Exception as e:
                R.failures["schema"] = str(e)[:600]
                log("schema FAILED: %s" % e)
        rows = target_rows()  # again: the stop target comes from the events scenario
        wall = time.monotonic() - T0
        generated = write_report(rows, started, wall)
        print(generated)
        log("wrote %s in %.0f s" % (os.path.relpath(OUT, ROOT), wall))
    finally:
        cleanup()


if __name__ == "__main__":
    main()
