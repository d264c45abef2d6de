#!/usr/bin/env bash
# The edge builds (make check-minimal; docs/abi.md "Build options"): for each
# build directory given, examples/hello answers a call, a URL or flag naming
# a left-out part fails with exit 2 and says which WITH_* took it out, and
# neither ldd nor pkg-config names a library of a left-out part.
#   tests/check-minimal.sh build/minimal-http build/minimal
# A directory whose name ends in -http keeps the HTTP bridge (it must serve
# hello over HTTP); any other has none.
set -uo pipefail
fail=0
bad() { echo "check-minimal: FAIL: $*"; fail=1; }

expect_refusal() { # dir sentence args...
    local dir=$1 sentence=$2
    shift 2
    local err rc
    err=$(timeout 20 "$dir/examples/hello/hello" "$@" 2>&1 >/dev/null)
    rc=$?
    [ $rc -eq 2 ] || bad "$dir: hello $* exited $rc, not 2"
    grep -qF "$sentence" <<<"$err" || bad "$dir: hello $* did not say '$sentence': $err"
}

serves_http() { # dir
    local dir=$1 log port out
    log=$(mktemp)
    "$dir/examples/hello/hello" --http 127.0.0.1:0 2>"$log" &
    local pid=$!
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on .* (port \([0-9]*\)).*/\1/p' "$log")
        [ -n "$port" ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    if [ -n "$port" ]; then
        out=$(curl -s --max-time 10 -H 'Content-Type: application/json' -d '{"name":"edge"}' \
              "http://127.0.0.1:$port/api/v1/hello")
        grep -qF 'Hello, edge!' <<<"$out" || bad "$dir: HTTP hello answered '$out'"
    else
        bad "$dir: hello --http did not listen: $(cat "$log")"
    fi
    kill $pid 2>/dev/null
    wait $pid 2>/dev/null
    rm -f "$log"
}

for dir in "$@"; do
    hello=$dir/examples/hello/hello
    [ -x "$hello" ] || { bad "$hello not built"; continue; }
    out=$(timeout 20 "$hello" --call greeter.hello '{"name":"edge"}' 2>&1)
    grep -qF '"message":"Hello, edge!"' <<<"$out" || bad "$dir: hello --call answered: $out"

    expect_refusal "$dir" "loom was built without MQTT (WITH_MQTT=0)" \
        --broker mqtt://127.0.0.1:1 --call greeter.hello '{"name":"x"}'
    expect_refusal "$dir" "loom was built without NATS (WITH_NATS=0)" \
        --broker nats://127.0.0.1:1 --call greeter.hello '{"name":"x"}'
    expect_refusal "$dir" "loom was built without Redis (WITH_REDIS=0)" \
        --state redis://127.0.0.1:1 --call greeter.hello '{"name":"x"}'

    left_out='paho|libnats|hiredis'
    if [[ $dir == *-http ]]; then
        serves_http "$dir"
        ldd "$hello" | grep microhttpd >/dev/null || bad "$dir: hello does not link libmicrohttpd"
    else
        left_out="$left_out|microhttpd"
        expect_refusal "$dir" "loom was built without the HTTP bridge (WITH_HTTP=0)" \
            --http 127.0.0.1:0
    fi
    for bin in "$hello" "$dir/libloom.so"; do
        found=$(ldd "$bin" | grep -E "$left_out")
        [ -z "$found" ] || bad "$bin links a left-out library: $found"
    done
    libs=$(PKG_CONFIG_PATH=$dir pkg-config --libs --static loom) || bad "$dir/loom.pc unreadable"
    grep -qE -- "-l(paho|nats|hiredis)" <<<"$libs" && bad "$dir/loom.pc lists a left-out library: $libs"
    [[ $dir == *-http ]] || ! grep -q -- "-lmicrohttpd" <<<"$libs" ||
        bad "$dir/loom.pc lists libmicrohttpd: $libs"
    [ $fail -eq 0 ] && echo "check-minimal: $dir: hello answers; left-out parts refused with exit 2; ldd and pkg-config clean ($libs)"
done
exit $fail
