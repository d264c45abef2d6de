#!/bin/sh
# Runs the shop split across processes on a three-node NATS cluster on
# loopback, each process connected to a different node, the way
# tests/test_split_nats.c's cluster test does:
#
#   nats-1   clients 127.0.0.1:4222, routes :6222, monitoring :8222
#   nats-2   clients 127.0.0.1:4223, routes :6223, monitoring :8223
#   nats-3   clients 127.0.0.1:4224, routes :6224, monitoring :8224
#
#   shop-a   --services users,orders,notifications  --broker nats://127.0.0.1:4222
#   pay-1    --services payments                    --broker nats://127.0.0.1:4223
#   pay-2    --services payments                    --broker nats://127.0.0.1:4224,127.0.0.1:4222
#   bridge   --services none --http 127.0.0.1:8080  --broker nats://127.0.0.1:4223,127.0.0.1:4222
#
# A process given one server learns the others from the cluster; one given
# a list picks from it at random. Kill a node (the script prints how) and
# its clients move to the others by themselves, without a restart. Runs
# until Ctrl-C (or SIGTERM), which stops every process it started.
#
# Environment:
#   NATS_PORT   the first node's client port (default 4222; the others
#               follow; routes listen 2000 above, monitoring 4000 above)
#   SHOP_HTTP   the bridge's address (default 127.0.0.1:8080)
#   SHOP        the shop binary (default: ../shop next to this script)
#   NATS_SERVER the nats-server binary (default: from PATH or /usr/sbin)
#   STATE       the shared state store (default: a file: store in the
#               temporary directory; across machines use redis://)
#   LOG_LEVEL   the shop processes' log level (default info)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
shop=${SHOP:-$here/../shop}
base=${NATS_PORT:-4222}
http_addr=${SHOP_HTTP:-127.0.0.1:8080}
log_level=${LOG_LEVEL:-info}

die() {
    echo "nats-cluster.sh: $*" >&2
    exit 1
}

find_tool() {
    command -v "$1" 2>/dev/null || {
        for d in /usr/sbin /usr/local/sbin /usr/bin; do
            if [ -x "$d/$1" ]; then
                echo "$d/$1"
                return 0
            fi
        done
        return 1
    }
}

[ -x "$shop" ] || die "$shop is not built yet: run 'make' first"
nats_server=${NATS_SERVER:-$(find_tool nats-server)} || die "nats-server is not installed (make deps)"
command -v curl >/dev/null || die "curl is not installed (make deps)"

work=$(mktemp -d "${TMPDIR:-/tmp}/loom-nats-cluster.XXXXXX")
pids=""

cleanup() {
    trap - EXIT INT TERM
    [ -z "$pids" ] || echo "nats-cluster.sh: stopping" >&2
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    i=0
    while [ $i -lt 150 ]; do
        alive=""
        for p in $pids; do
            if kill -0 "$p" 2>/dev/null; then alive="$alive $p"; fi
        done
        [ -n "$alive" ] || break
        sleep 0.1
        i=$((i + 1))
    done
    for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

client() { echo $((base + $1 - 1)); }
route() { echo $((base + 2000 + $1 - 1)); }
monitor() { echo $((base + 4000 + $1 - 1)); }

# One configuration per node: the same shape as on three machines (see
# docs/deployment.md), with loopback ports.
for n in 1 2 3; do
    routes=""
    for m in 1 2 3; do
        [ "$m" = "$n" ] || routes="$routes${routes:+, }nats-route://127.0.0.1:$(route "$m")"
    done
    cat >"$work/nats-$n.conf" <<CONF
server_name: nats-$n
listen: 127.0.0.1:$(client "$n")
http: 127.0.0.1:$(monitor "$n")
cluster {
  name: shop
  listen: 127.0.0.1:$(route "$n")
  routes: [$routes]
}
CONF
    "$nats_server" -c "$work/nats-$n.conf" >"$work/nats-$n.log" 2>&1 &
    echo $! >"$work/nats-$n.pid"
    pids="$pids $!"
done

# Up when every node answers and routes to both others.
for n in 1 2 3; do
    i=0
    until curl -fsS "http://127.0.0.1:$(monitor "$n")/routez" 2>/dev/null |
        grep -q '"num_routes": 2'; do
        i=$((i + 1))
        if [ $i -ge 100 ]; then
            tail -n 20 "$work"/nats-*.log >&2
            die "the cluster did not form (are ports $(client 1)-$(client 3)," \
                "$(route 1)-$(route 3), $(monitor 1)-$(monitor 3) free? set NATS_PORT)"
        fi
        sleep 0.1
    done
done

n1=127.0.0.1:$(client 1)
n2=127.0.0.1:$(client 2)
n3=127.0.0.1:$(client 3)
state=${STATE:-file:$work/state.json}

# start NAME BROKER-URL FLAGS...: one shop process, its output in $work/NAME.log.
start() {
    name=$1
    url=$2
    shift 2
    "$shop" --broker "$url" --instance "$name" --log-level "$log_level" "$@" \
        >"$work/$name.log" 2>&1 &
    pids="$pids $!"
    shops="$shops $!"
}
shops=""

start shop-a "nats://$n1" --services users,orders,notifications --state "$state"
start pay-1 "nats://$n2" --services payments --state "$state"
start pay-2 "nats://$n3,$n1" --services payments --state "$state"
start bridge "nats://$n2,$n1" --services none --state memory: --http "$http_addr"

i=0
until curl -fsS "http://$http_addr/readyz" 2>/dev/null | grep -q '"routes":6'; do
    i=$((i + 1))
    if [ $i -ge 200 ]; then
        tail -n 20 "$work"/*.log >&2
        die "the bridge on $http_addr did not discover the services within 20 s"
    fi
    sleep 0.1
done

cat <<EOF
The shop runs on a three-node NATS cluster (nats://$n1,$n2,$n3):
  shop-a  users, orders, notifications   on nats-1
  pay-1   payments                       on nats-2
  pay-2   payments                       on nats-3 (or nats-1)
  bridge  HTTP on http://$http_addr      on nats-2 (or nats-1)
Logs and node configurations: $work (removed on exit). Stop with Ctrl-C.

In another terminal, paste:

  B=http://$http_addr

  curl -s -X POST \$B/api/v1/users -H 'Content-Type: application/json' \\
      -d '{"name":"Ada","email":"ada@example.com"}'; echo
  curl -s -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"u-1","items":[{"sku":"book-42","quantity":2}],"amount":39.90}'; echo
  curl -s "\$B/api/v1/notifications?userId=u-1"; echo

  # which node each process is connected to
  for m in $(monitor 1) $(monitor 2) $(monitor 3); do
      echo "node :\$m"; curl -s "http://127.0.0.1:\$m/connz" | grep '"name"'; done

  # kill nats-2: pay-1 and the bridge move to another node by themselves
  kill \$(cat $work/nats-2.pid)
  grep 'broker' $work/pay-1.log $work/bridge.log
  curl -s -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"u-1","items":[{"sku":"book-7","quantity":1}],"amount":5}'; echo

EOF

# Run until interrupted; report a shop process that dies on its own (the
# nodes may be killed on purpose).
while sleep 1; do
    for p in $shops; do
        if ! kill -0 "$p" 2>/dev/null; then
            tail -n 20 "$work"/*.log >&2
            die "process $p exited; see the logs above"
        fi
    done
done
