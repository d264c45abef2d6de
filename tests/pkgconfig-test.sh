#!/usr/bin/env bash
# Installs loom into a scratch prefix and builds a small program out of the
# tree with `pkg-config --cflags --libs loom`, shared and static, then runs
# both; then builds and runs `make test` of examples/template (a copy) against
# the installed copy. Checks the installed library links and docs. Fails on
# any step.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make -s -C "$top" install PREFIX="$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# The library under its full version with the SONAME and -lloom links, and
# the documentation.
version=$(sed -n 's/^#define LOOM_VERSION_STRING "\(.*\)"/\1/p' "$top/include/loom/version.h")
lib=$tmp/prefix/lib
[ -f "$lib/libloom.so.$version" ] && [ "$(readlink "$lib/libloom.so.0")" = "libloom.so.$version" ] &&
    [ "$(readlink "$lib/libloom.so")" = libloom.so.0 ] ||
    { echo "pkgconfig-test: libloom.so.$version and its links are not installed"; ls -l "$lib"; exit 1; }
for doc in README.md LICENSE abi.md api.md getting-started.md; do
    [ -s "$tmp/prefix/share/doc/loom/$doc" ] ||
        { echo "pkgconfig-test: share/doc/loom/$doc is not installed"; exit 1; }
done
cat > "$tmp/app.c" <<'C'
#include <loom.h>
#include <stdio.h>
#include <string.h>

static void hi(loom_ctx *ctx, void *user)
{
    (void)user;
    const cJSON *name = cJSON_GetObjectItem(loom_ctx_payload(ctx), "name");
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "hello", cJSON_IsString(name) ? name->valuestring : "?");
    loom_ctx_reply(ctx, out);
}
LOOM_COMMAND(cmd_hi, .name = "hi", .handler = hi);
LOOM_SERVICE(svc, .name = "app", .version = "1", .commands = LOOM_COMMANDS(&cmd_hi));

int main(void)
{
    loom_runtime_config cfg = LOOM_RUNTIME_CONFIG_INIT(.log_level = LOOM_LOG_WARN);
    loom_runtime *rt = NULL;
    if (loom_runtime_create(&rt, &cfg) || loom_runtime_add_service(rt, &svc, NULL) ||
        loom_runtime_start(rt))
        return 1;
    loom_call call = LOOM_CALL_INIT(.service = "app", .command = "hi",
                      .payload = cJSON_Parse("{\"name\":\"pkg-config\"}"));
    loom_msg *resp = NULL;
    if (loom_runtime_call(rt, &call, &resp) || loom_msg_status(resp) != 200)
        return 1;
    const cJSON *h = cJSON_GetObjectItem(loom_msg_payload(resp), "hello");
    int ok = cJSON_IsString(h) && strcmp(h->valuestring, "pkg-config") == 0;
    printf("out-of-tree app (loom %s): %s\n", loom_version(), ok ? "ok" : "WRONG");
    loom_msg_release(resp);
    loom_runtime_destroy(rt);
    return ok ? 0 : 1;
}
C
cc -Wall -Wextra -Werror -o "$tmp/app-shared" "$tmp/app.c" $(pkg-config --cflags --libs loom)
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/app-shared"
# the shared library's SONAME is the major version
readelf -d "$tmp/prefix/lib/libloom.so" | grep -q 'SONAME.*libloom.so.[0-9]'
cc -Wall -Wextra -Werror -o "$tmp/app-static" "$tmp/app.c" $(pkg-config --cflags loom) \
    "$tmp/prefix/lib/libloom.a" $(pkg-config --libs --static loom | sed 's/-lloom//')
"$tmp/app-static"
# The project template, copied out of the tree, built and tested against the
# installed copy: its Makefile uses pkg-config and an rpath (no
# LD_LIBRARY_PATH), its test uses the installed test kit (loom/test.h).
cp -r "$top/examples/template" "$tmp/template"
rm -f "$tmp/template/greenhouse" "$tmp/template/test_greenhouse"
(cd "$tmp/template" && env -u LD_LIBRARY_PATH make -s test)
test -f "$tmp/prefix/include/loom/test.h"
make -s -C "$top" uninstall PREFIX="$tmp/prefix" >/dev/null
test ! -e "$tmp/prefix/include/loom.h"
echo "pkgconfig-test: shared and static builds and the project template against the installed copy work"
