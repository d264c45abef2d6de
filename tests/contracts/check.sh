#!/usr/bin/env bash
# make check-contracts: the shop's OpenAPI document (shop --openapi) must lint
# with 0 errors under @redocly/cli's recommended rules and be valid for
# @seriousme/openapi-schema-validator; its AsyncAPI document (shop
# --asyncapi, over MQTT and over NATS) must parse with @asyncapi/parser
# without an error-severity diagnostic. Each validator is first shown a
# deliberately broken document and must refuse it, so a validator that
# cannot fail (not installed, wrong flags, output not checked) fails here.
#
#   tests/contracts/check.sh SHOP_BINARY
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shop=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# No telemetry, update checks or install scripts: the validators only read files.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true NO_UPDATE_NOTIFIER=1 SCARF_ANALYTICS=false

(cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
bin=$here/node_modules/.bin

"$shop" --openapi "$out/openapi.json" --state memory:
"$shop" --asyncapi "$out/asyncapi-mqtt.json" --state memory: --broker mqtt://127.0.0.1:1883
"$shop" --asyncapi "$out/asyncapi-nats.json" --state memory: --broker nats://127.0.0.1:4222

# A document with a dangling $ref and no info.version.
node -e '
const fs = require("fs");
const d = JSON.parse(fs.readFileSync(process.argv[1]));
delete d.info.version;
const op = Object.values(Object.values(d.paths)[0])[0];
op.responses["418"] = {$ref: "#/components/responses/NoSuchResponse"};
fs.writeFileSync(process.argv[2], JSON.stringify(d));
' "$out/openapi.json" "$out/broken-openapi.json"

# An operation on a channel that does not exist, and no info.
node -e '
const fs = require("fs");
const d = JSON.parse(fs.readFileSync(process.argv[1]));
delete d.info;
Object.values(d.operations)[0].channel = {$ref: "#/channels/noSuchChannel"};
fs.writeFileSync(process.argv[2], JSON.stringify(d));
' "$out/asyncapi-mqtt.json" "$out/broken-asyncapi.json"

fails=0
# what, the complaint its output must contain, command...
expect_refused() {
    local what=$1 complaint=$2; shift 2
    if "$@" >"$out/log" 2>&1 || ! grep -q -- "$complaint" "$out/log"; then
        echo "---- $what did not refuse a broken document with \"$complaint\" ----"
        cat "$out/log"; fails=$((fails + 1))
    else
        echo "ok   $what refuses a broken document"
    fi
}
expect_ok() {
    local what=$1; shift
    if "$@" >"$out/log" 2>&1; then
        echo "ok   $what"; grep -E 'warning|error' "$out/log" | grep -v 'Deprecation' || true
    else
        echo "---- $what FAILED ----"; cat "$out/log"; fails=$((fails + 1))
    fi
}
lint() { "$bin/redocly" lint --extends recommended --format stylish "$1"; }
validate() { # the CLI exits 1 on an invalid document; its JSON must also say valid
    "$bin/validate-api" "$1" | tee /dev/stderr | node -e '
        let s = ""; process.stdin.on("data", c => s += c).on("end", () =>
            process.exit(JSON.parse(s).valid === true ? 0 : 1));'
}

expect_refused "redocly lint" "Validation failed with 2 errors" lint "$out/broken-openapi.json"
expect_refused "openapi-schema-validator" "must have required property 'version'" \
    validate "$out/broken-openapi.json"
expect_refused "@asyncapi/parser" "error invalid-ref" node "$here/asyncapi-parse.js" "$out/broken-asyncapi.json"
expect_ok "redocly lint (recommended): shop openapi.json" lint "$out/openapi.json"
expect_ok "openapi-schema-validator: shop openapi.json" validate "$out/openapi.json"

expect_ok "@asyncapi/parser: shop asyncapi.json (MQTT)" node "$here/asyncapi-parse.js" \
    "$out/asyncapi-mqtt.json"
expect_ok "@asyncapi/parser: shop asyncapi.json (NATS)" node "$here/asyncapi-parse.js" \
    "$out/asyncapi-nats.json"

passed=$((8 - fails))
echo "check-contracts: $passed passed, $fails failed"
[ "$fails" -eq 0 ]
