#!/bin/sh
# Runs the shop monolithic with the HTTP bridge and prints ready-to-paste curl
# commands for the order flow. Used by `make demo`; extra arguments go to the
# shop (e.g. --log-level debug, --config examples/shop/shop.yaml).
# SHOP_HTTP=HOST:PORT changes the address (default 127.0.0.1:8080).
set -eu

dir=$(cd "$(dirname "$0")" && pwd)
addr=${SHOP_HTTP:-127.0.0.1:8080}
shop="$dir/shop"
if [ ! -x "$shop" ]; then
    echo "demo: $shop is not built yet: run 'make' first" >&2
    exit 1
fi
# The shop keeps its state in this file, in a private directory (see
# main.c); the demo starts empty.
state="${TMPDIR:-/tmp}/loom-shop-$(id -u)/state.json"
rm -f "$state" "$state.lock"

cat <<EOF
The shop is starting on http://$addr (stop it with Ctrl-C).

NOTE: this demo turns HTTP authentication OFF (--set http.auth.required=false),
so POST /api/v1/payments, which is not public, is open to anyone on $addr.
A real deployment configures tokens instead (http.auth.tokens_env: SHOP_TOKENS
in examples/shop/shop.yaml); without tokens and without this flag protected
routes answer 401.
In another terminal, paste:

  B=http://$addr

  # 1. create a user; its id (u-1 in a fresh shop) is kept in USER_ID
  USER_ID=\$(curl -s -X POST \$B/api/v1/users -H 'Content-Type: application/json' \\
      -d '{"name":"Ada","email":"ada@example.com"}' \\
      | tee /dev/stderr | sed -n 's/.*"id":[[:space:]]*"\([^"]*\)".*/\1/p'); echo

  # 2. place an order for that user (checks the user, charges, emits orderCreated)
  ORDER_ID=\$(curl -s -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"'\$USER_ID'","items":[{"sku":"book-42","quantity":2}],"amount":39.90}' \\
      | tee /dev/stderr | sed -n 's/.*"id":[[:space:]]*"\([^"]*\)".*/\1/p'); echo

  # 3. read the order back
  curl -s \$B/api/v1/orders/\$ORDER_ID; echo

  # 4. the notification the orderCreated event produced
  curl -s "\$B/api/v1/notifications?userId=\$USER_ID"; echo

  # errors: an invalid payload (400), an unknown user (422), an unknown order (404)
  curl -si -X POST \$B/api/v1/users -H 'Content-Type: application/json' -d '{"name":"Bob"}'; echo
  curl -si -X POST \$B/api/v1/orders -H 'Content-Type: application/json' \\
      -d '{"userId":"u-999","items":[{"sku":"x","quantity":1}],"amount":1}'; echo
  curl -si \$B/api/v1/orders/o-999; echo

  # the API description, health and metrics
  curl -s \$B/api/openapi.json; echo
  curl -s \$B/healthz; echo
  curl -s \$B/readyz; echo
  curl -s \$B/metrics

The same without HTTP, one process per call (the shop's state is the file
$state, shared with the running demo):
  $shop --call users.create '{"name":"Grace","email":"grace@example.com"}'
  $shop --call orders.create '{"userId":"u-1","items":[{"sku":"pen","quantity":1}],"amount":2.5}'
  $shop --call notifications.list

EOF

exec "$shop" --services all --http "$addr" --set http.auth.required=false "$@"
