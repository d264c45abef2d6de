#!/bin/sh
# Runs three monolithic shop instances (every service in each) on loopback,
# behind nginx when it is installed:
#
#   nginx       127.0.0.1:8080  round-robin over the three (nginx.conf)
#   shop-1..3   127.0.0.1:8081, 8082, 8083  --services all
#
#   redis       127.0.0.1:6379    the shared state store, when installed
#
# The instances share one mosquitto (an event raised in one instance reaches
# the subscribers of all, each handled once per subscription group, and
# clients outside the three can call their commands) and one state store (a
# user created through one instance is found through another). This is the
# layout tests/test_scaleout.c checks, with this directory's nginx.conf.
# The broker is secured as in split.sh (docs/security.md): one broker user
# per instance (shop-1..3), one signing identity (shop) for all three, made
# by secure.sh; INSECURE=1 runs without. Prints curl commands, then runs
# until Ctrl-C (or SIGTERM), which stops every process it started.
#
# Environment:
#   MQTT_PORT   mosquitto's port on 127.0.0.1 (default 1883)
#   LB_PORT     nginx's port (default 8080)
#   SHOP_PORT   the first instance's port; the others follow (default 8081)
#   REDIS_PORT  the private redis-server's port (default 6379)
#   SHOP        the shop binary (default: ../shop next to this script)
#   MOSQUITTO, NGINX, REDIS   the binaries (default: from PATH or /usr/sbin)
#   STATE       the shared state store. Default: a private redis-server
#               (no persistence: it starts empty and its data goes with it)
#               when redis-server is installed, else a file: store in the
#               temporary directory. Set it to use a Redis of your own
#               (STATE=redis://10.0.0.5:6379/2), or STATE=file:PATH.
#   LOG_LEVEL   the shop instances' log level (default info)
#   INSECURE    1: no broker users, ACLs or signatures
set -eu

here=$(cd "$(dirname "$0")" && pwd)
shop=${SHOP:-$here/../shop}
mqtt_port=${MQTT_PORT:-1883}
lb_port=${LB_PORT:-8080}
shop_port=${SHOP_PORT:-8081}
log_level=${LOG_LEVEL:-info}

die() {
    echo "monolith-x3.sh: $*" >&2
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
mosquitto=${MOSQUITTO:-$(find_tool mosquitto)} || die "mosquitto is not installed (make deps)"
command -v mosquitto_pub >/dev/null || die "mosquitto-clients is not installed (make deps)"
command -v curl >/dev/null || die "curl is not installed (make deps)"
nginx=${NGINX:-$(find_tool nginx || true)}
redis_port=${REDIS_PORT:-6379}
redis=""
if [ -z "${STATE:-}" ]; then
    redis=${REDIS:-$(find_tool redis-server || true)}
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/loom-x3.XXXXXX")
pids=""

cleanup() {
    trap - EXIT INT TERM
    [ -z "$pids" ] || echo "monolith-x3.sh: stopping" >&2
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

# http://ADDR/PATH answers 2xx within 20 s, or die.
wait_http() {
    i=0
    until curl -fsS -o /dev/null "http://$1$2" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -ge 200 ]; then
            tail -n 20 "$work"/*.log >&2
            die "http://$1$2 did not answer within 20 s"
        fi
        sleep 0.1
    done
}

sed "s/^listener .*/listener $mqtt_port 127.0.0.1/" "$here/mosquitto.conf" >"$work/mosquitto.conf"
creds=""
secure=""
if [ "${INSECURE:-0}" != 1 ]; then
    command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd is missing (mosquitto-clients)"
    secure=$work/secure
    all=users,orders,payments,notifications
    "$here/secure.sh" "$secure" "$shop" "shop-1:shop:$all" "shop-2:shop:$all" \
        "shop-3:shop:$all" operator::-
    sed '/^allow_anonymous/d' "$work/mosquitto.conf" >"$work/mosquitto.conf.tmp"
    cat "$work/mosquitto.conf.tmp" "$secure/mosquitto-auth.conf" >"$work/mosquitto.conf"
    [ "$(id -u)" != 0 ] || echo "user root" >>"$work/mosquitto.conf"
    creds="-u operator -P $(cat "$secure/operator.password")"
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

# One shared store for all three. Redis works across machines too; a file:
# store only on one machine (it locks across processes).
if [ -n "${STATE:-}" ]; then
    state=$STATE
elif [ -n "$redis" ]; then
    "$redis" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    pids="$pids $!"
    i=0
    until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
        i=$((i + 1))
        if [ $i -ge 50 ]; then
            cat "$work/redis.log" >&2
            die "redis-server did not start on 127.0.0.1:$redis_port" \
                "(is the port taken? set REDIS_PORT, or STATE=redis://... for a running one)"
        fi
        sleep 0.1
    done
    state=redis://127.0.0.1:$redis_port
else
    echo "monolith-x3.sh: redis-server is not installed (make deps): the instances" \
        "share a file: store instead" >&2
    state=file:$work/state.json
fi
p1=$shop_port
p2=$((shop_port + 1))
p3=$((shop_port + 2))
ports="$p1 $p2 $p3"
n=0
for port in $ports; do
    n=$((n + 1))
    conf=""
    [ -z "$secure" ] || conf="--config $secure/shop-$n.yaml"
    # shellcheck disable=SC2086
    "$shop" $conf --services all --broker "$broker" --state "$state" --instance "shop-$n" \
        --http "127.0.0.1:$port" --log-level "$log_level" >"$work/shop-$n.log" 2>&1 &
    pids="$pids $!"
done
for port in $ports; do wait_http "127.0.0.1:$port" /readyz; done

front=""
if [ -n "$nginx" ]; then
    # nginx.conf with this run's ports; its relative paths land in $work/nginx.
    mkdir -p "$work/nginx/temp"
    sed -e "s/127\.0\.0\.1:8080;/127.0.0.1:$lb_port;/" \
        -e "s/127\.0\.0\.1:8081 /127.0.0.1:$p1 /" \
        -e "s/127\.0\.0\.1:8082 /127.0.0.1:$p2 /" \
        -e "s/127\.0\.0\.1:8083 /127.0.0.1:$p3 /" \
        "$here/nginx.conf" >"$work/nginx/nginx.conf"
    # As root nginx's workers run as nobody: let them reach their files.
    chmod 711 "$work"
    chmod 755 "$work/nginx"
    "$nginx" -p "$work/nginx" -e stderr -c "$work/nginx/nginx.conf" -g 'daemon off;' \
        >"$work/nginx.log" 2>&1 &
    pids="$pids $!"
    wait_http "127.0.0.1:$lb_port" /readyz
    front=127.0.0.1:$lb_port
else
    echo "monolith-x3.sh: nginx is not installed (make deps): no load balancer;" \
        "call the instances directly" >&2
    front=127.0.0.1:$shop_port
fi

hints=""
if [ -n "$nginx" ]; then
    hints="$hints
  # which instance served: nginx says so in X-Upstream (round-robin)
  for i in 1 2 3; do curl -si \$B/api/v1/orders/o-1 | grep -i x-upstream; done
"
fi
case $state in
redis:*)
    hints="$hints
  # the shared state, in Redis (loom's keys have the prefix loom:)
  redis-cli -u $state --scan --pattern 'loom:*'
"
    ;;
esac

cat <<EOF
Three monolithic shop instances share mosquitto ($broker) and one state
store ($state):
$(n=0; for port in $ports; do n=$((n + 1)); echo "  shop-$n  http://127.0.0.1:$port"; done)
$([ -n "$nginx" ] && echo "nginx round-robins over them on http://$front")
Logs: $work/*.log (removed on exit). Stop everything with Ctrl-C.

In another terminal, paste:

  B=http://$front

  # a user created through one instance is found through the others
  curl -s -X POST \$B/api/v1/users -H 'Content-Type: application/json' \\
      -d '{"name":"Ada","email":"ada@example.com"}'; echo
  for i in 1 2 3; do curl -s \$B/api/v1/users/u-1; echo; done
  curl -s -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"u-1","items":[{"sku":"book-42","quantity":2}],"amount":39.90}'; echo
  curl -s "\$B/api/v1/notifications?userId=u-1"; echo

  # each instance's log shows the commands it ran
  grep 'created user\|placed\|captured\|notified' $work/shop-*.log
$hints

EOF

while sleep 1; do
    for p in $pids; do
        if ! kill -0 "$p" 2>/dev/null; then
            tail -n 20 "$work"/*.log >&2
            die "process $p exited; see the logs above"
        fi
    done
done
