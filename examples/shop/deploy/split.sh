#!/bin/sh
# Runs the shop split across processes on loopback, all from the one shop
# binary, talking through a private broker (mosquitto, or nats-server with
# BROKER=nats):
#
#   shop-a   --services users,orders,notifications
#   pay-1    --services payments           (two instances of payments:
#   pay-2    --services payments            the broker balances the charges)
#   bridge   --services none --http ...     (the HTTP bridge, no services)
#
# Secure by default (docs/security.md): every process logs in to the broker
# as its own user (mosquitto with the dynamic security plugin, or
# nats-server users), confined to its own topics, and signs what it sends
# (security.signing); secure.sh generates the keys, passwords and broker
# configuration into the temporary directory. INSECURE=1 runs without.
#
# The service processes share one file: state store. Prints ready-to-paste
# curl commands (and plain-client commands for the broker), then runs until
# Ctrl-C (or SIGTERM), which stops every process it started. Logs go to a
# temporary directory (printed). tests/test_split.c (MQTT) and
# tests/test_split_nats.c (NATS) run this layout.
#
# Environment:
#   BROKER      mqtt (default) or nats
#   MQTT_PORT   mosquitto's port on 127.0.0.1 (default 1883)
#   NATS_PORT   nats-server's client port on 127.0.0.1 (default 4222; its
#               monitoring endpoint listens on NATS_PORT + 4000)
#   SHOP_HTTP   the bridge's address (default 127.0.0.1:8080)
#   SHOP        the shop binary (default: ../shop next to this script; run
#               `make` first)
#   MOSQUITTO, NATS_SERVER   the broker binary (default: from PATH or /usr/sbin)
#   STATE       the shared state store (default: a file: store in the
#               temporary directory; e.g. redis://127.0.0.1:6379 with a
#               redis-server running)
#   LOG_LEVEL   the shop processes' log level (default info)
#   INSECURE    1: no broker users, ACLs or signatures (anyone on the
#               machine can then call, answer and announce anything)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
shop=${SHOP:-$here/../shop}
kind=${BROKER:-mqtt}
mqtt_port=${MQTT_PORT:-1883}
nats_port=${NATS_PORT:-4222}
http_addr=${SHOP_HTTP:-127.0.0.1:8080}
log_level=${LOG_LEVEL:-info}

die() {
    echo "split.sh: $*" >&2
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
case $kind in
mqtt)
    mosquitto=${MOSQUITTO:-$(find_tool mosquitto)} || die "mosquitto is not installed (make deps)"
    command -v mosquitto_pub >/dev/null || die "mosquitto-clients is not installed (make deps)"
    ;;
nats)
    nats_server=${NATS_SERVER:-$(find_tool nats-server)} ||
        die "nats-server is not installed (make deps)"
    ;;
*) die "BROKER must be mqtt or nats, not '$kind'" ;;
esac
command -v curl >/dev/null || die "curl is not installed (make deps)"

work=$(mktemp -d "${TMPDIR:-/tmp}/loom-split.XXXXXX")
pids=""
secure=${INSECURE:-0}
[ "$secure" = 1 ] && secure="" || secure=$work/secure
if [ -n "$secure" ]; then
    command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is missing (mosquitto-clients)"
    "$here/secure.sh" "$secure" "$shop" shop-a:shop-a:users,orders,notifications:payments \
        pay-1:payments:payments:orders pay-2:payments:payments:orders pay-3:payments:payments:orders \
        bridge:bridge:- cli:cli:- operator::-:payments
    opass=$(cat "$secure/operator.password")
fi

# Stops every process this script started: SIGTERM (a graceful stop
# withdraws the announcements), then SIGKILL after 15 s.
cleanup() {
    trap - EXIT INT TERM
    [ -z "$pids" ] || echo "split.sh: stopping" >&2
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

if [ "$kind" = mqtt ]; then
    # mosquitto, with this directory's configuration on the chosen port.
    sed "s/^listener .*/listener $mqtt_port 127.0.0.1/" "$here/mosquitto.conf" \
        >"$work/mosquitto.conf"
    creds=""
    if [ -n "$secure" ]; then
        sed '/^allow_anonymous/d' "$work/mosquitto.conf" >"$work/mosquitto.conf.tmp"
        cat "$work/mosquitto.conf.tmp" "$secure/mosquitto-auth.conf" >"$work/mosquitto.conf"
        # as root mosquitto would drop to the user mosquitto, who cannot read them
        [ "$(id -u)" != 0 ] || echo "user root" >>"$work/mosquitto.conf"
        creds="-u operator -P $opass"
    fi
    "$mosquitto" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    pids="$pids $!"
    i=0
    # shellcheck disable=SC2086
    until mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" $creds -t loom-deploy/ping -n 2>/dev/null; do
        i=$((i + 1))
        if [ $i -ge 50 ]; then
            cat "$work/mosquitto.log" >&2
            die "mosquitto did not start on 127.0.0.1:$mqtt_port (is the port taken? set MQTT_PORT)"
        fi
        sleep 0.1
    done
    broker=mqtt://127.0.0.1:$mqtt_port
else
    # nats-server: one node, loopback only, with its monitoring endpoint.
    monitor=$((nats_port + 4000))
    printf 'listen: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\n' "$nats_port" "$monitor" \
        >"$work/nats.conf"
    [ -z "$secure" ] || cat "$secure/nats-auth.conf" >>"$work/nats.conf"
    "$nats_server" -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
    pids="$pids $!"
    i=0
    until curl -fsS -o /dev/null "http://127.0.0.1:$monitor/healthz" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -ge 50 ]; then
            cat "$work/nats.log" >&2
            die "nats-server did not start on 127.0.0.1:$nats_port (is the port taken? set NATS_PORT)"
        fi
        sleep 0.1
    done
    broker=nats://127.0.0.1:$nats_port
fi

state=${STATE:-file:$work/state.json}

# start NAME FLAGS...: one shop process, its output in $work/NAME.log.
start() {
    name=$1
    shift
    conf=""
    [ -z "$secure" ] || conf="--config $secure/$name.yaml"
    # shellcheck disable=SC2086
    "$shop" $conf --broker "$broker" --instance "$name" --log-level "$log_level" "$@" \
        >"$work/$name.log" 2>&1 &
    pids="$pids $!"
}

start shop-a --services users,orders,notifications --state "$state"
start pay-1 --services payments --state "$state"
start pay-2 --services payments --state "$state"
start bridge --services none --state memory: --http "$http_addr"

# Ready when the bridge has discovered the six routes of the four services
# (over NATS within a second or two: announcements are heartbeats there).
i=0
until curl -fsS "http://$http_addr/readyz" 2>/dev/null | grep -q '"routes":6'; do
    i=$((i + 1))
    if [ $i -ge 200 ]; then
        tail -n 20 "$work"/*.log >&2
        die "the bridge on $http_addr did not discover the services within 20 s"
    fi
    sleep 0.1
done

if [ "$kind" = mqtt ]; then
    plain="
  # a plain MQTT 5 client calls a command: bare JSON in, bare JSON out
  # (secure: as the user operator, whom the broker lets call payments;
  # o-77 is no order yet, so payments answers 422 unknown order: charge an
  # order id from the curl lines above to see a payment)
  mosquitto_rr -V 5 -h 127.0.0.1 -p $mqtt_port ${creds:+$creds }-t loom/cmd/payments/1/charge \\
      -e loom/reply/operator/\$\$ -m '{\"orderId\":\"o-77\",\"amount\":5}' -F '%p  (%P)'
"
    watch="
  # the service announcements (retained)
  mosquitto_sub -h 127.0.0.1 -p $mqtt_port ${creds:+$creds }-t 'loom/svc/+' -v -W 1
"
else
    plain="
  # a plain NATS client (the nats CLI, github.com/nats-io/natscli) calls a
  # command: bare JSON in, bare JSON and a status header out
  nats --server $broker ${secure:+--user operator --password $opass }req loom.cmd.payments.1.charge '{\"orderId\":\"o-77\",\"amount\":5}'
"
    watch="
  # the service announcements (a heartbeat a second from each instance)
  nats --server $broker sub 'loom.svc.*'
  # who is connected
  curl -s 'http://127.0.0.1:$monitor/connz?limit=100' | grep '\"name\"'
"
fi

cat <<EOF
The shop runs split across 4 processes over $kind on $broker:
  shop-a  users, orders, notifications
  pay-1   payments
  pay-2   payments
  bridge  HTTP on http://$http_addr
Logs: $work/*.log (removed on exit). Stop everything with Ctrl-C.

In another terminal, paste:

  B=http://$http_addr

  # create a user (u-1), place an order: orders (shop-a) charges through
  # payments (pay-1 or pay-2) over the broker, then emits orderCreated
  curl -s -X POST \$B/api/v1/users -H 'Content-Type: application/json' \\
      -d '{"name":"Ada","email":"ada@example.com"}'; echo
  curl -s -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"u-1","items":[{"sku":"book-42","quantity":2}],"amount":39.90}'; echo
  curl -s \$B/api/v1/orders/o-1; echo
  curl -s "\$B/api/v1/notifications?userId=u-1"; echo

  # which payments instance served it
  grep -h captured $work/pay-*.log
$plain
  # a one-shot client process over the broker
  $shop ${secure:+--config $secure/cli.yaml }--broker $broker --services none --state memory: --call notifications.list

  # one more payments instance (the broker spreads the charges over three)
  $shop ${secure:+--config $secure/pay-3.yaml }--broker $broker --services payments --state $state --instance pay-3
$watch
EOF

# Run until interrupted; report a process that dies on its own.
while sleep 1; do
    for p in $pids; do
        if ! kill -0 "$p" 2>/dev/null; then
            tail -n 20 "$work"/*.log >&2
            die "process $p exited; see the logs above"
        fi
    done
done
