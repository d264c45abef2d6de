#!/usr/bin/env bash
# The access log's cost on the wrk GET path: CPU time of the shop process
# per request (utime+stime from /proc, robust to a loaded machine, unlike
# req/s), with http.access_log off and on (lines to a file, and to
# /dev/null), interleaved, ROUNDS times (default 4); prints the medians.
#   bench/access_log.sh [SHOP] [BASELINE_SHOP]
# BASELINE_SHOP, when given (a shop built before the access log), is
# measured too. Needs wrk and curl. Not part of `make bench`.
set -euo pipefail
shop=${1:-examples/shop/shop}
base=${2:-}
rounds=${ROUNDS:-4}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One run: prints CPU microseconds per request.
run() {
    local bin=$1 log=$2
    shift 2
    local port=$((20000 + RANDOM % 20000))
    "$bin" --state memory: --http 127.0.0.1:$port --log-level info "$@" 2>"$log" &
    local pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    curl -s -o /dev/null -X POST -H 'content-type: application/json' \
        -d '{"name":"Ada","email":"ada@example.com"}' "http://127.0.0.1:$port/api/v1/users"
    local t0 t1 n
    t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    n=$(wrk -t2 -c64 -d4s "http://127.0.0.1:$port/api/v1/users/u-1" | awk '/requests in/ {print $1}')
    t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill $pid
    wait $pid 2>/dev/null || true
    local hz
    hz=$(getconf CLK_TCK)
    echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

declare -A results
for _ in $(seq "$rounds"); do
    [ -n "$base" ] && results[baseline]+="$(run "$base" "$tmp/base.log") "
    results[off]+="$(run "$shop" "$tmp/off.log" --set http.access_log=off) "
    results[on-file]+="$(run "$shop" "$tmp/on.log") "
    results[on-devnull]+="$(run "$shop" /dev/null) "
done
for k in baseline off on-file on-devnull; do
    [ -n "${results[$k]:-}" ] || continue
    printf '%-11s %6.2f us CPU per request (median of %d)\n' "$k" \
        "$(echo "${results[$k]}" | tr ' ' '\n' | grep . | median)" "$rounds"
done
