/*
 * The shop program: links all four services; configuration decides which
 * of them run in this process (--services users,orders | all | none) and
 * which broker connects them (memory: by default, mqtt://... when split).
 *
 *   ./shop --call users.create '{"name":"Ada","email":"ada@example.com"}'
 *   ./shop --services all --http 127.0.0.1:8080          (see demo.sh)
 *
 * Unless the configuration file, LOOM_STATE or --state say otherwise, the
 * shop keeps its state in a file store, $TMPDIR/loom-shop-UID.json, so that
 * one-shot --call processes and a running shop see the same users and
 * orders (a program default, given to loom_main_with). Pass --state memory:
 * for a purely in-memory run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "shop.h"

int main(int argc, char **argv)
{
    const loom_service_def *const *services =
        LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications);
    /* The default state, under the file, the environment and the flags. */
    const char *tmp = getenv("TMPDIR");
    char state[512];
    snprintf(state, sizeof state, "state.url=file:%s/loom-shop-%u.json", tmp && *tmp ? tmp : "/tmp",
             (unsigned)getuid());
    loom_main_options opts = {
        .name = "shop",
        .version = SHOP_VERSION,
        .description = "The loom shop example: users, orders, payments and notifications",
        .defaults = (const char *const[]){state, NULL},
    };
    return loom_main_with(argc, argv, services, &opts);
}
