/*
 * The shop program: links all four services; configuration decides which
 * of them run in this process (--services users,orders | all | none) and
 * which broker connects them (memory: by default, mqtt://... when split).
 *
 *   ./shop --call users.create '{"name":"Ada","email":"ada@example.com"}'
 *   ./shop --services all --http 127.0.0.1:8080          (see demo.sh)
 *
 * Unless the configuration file, LOOM_STATE or --state say otherwise, the
 * shop keeps its state in a file store, $TMPDIR/loom-shop-UID/state.json
 * (a program default, given to loom_main_with), so that one-shot --call
 * processes and a running shop see the same users and orders. The
 * directory is created private (0700) and must stay so: in a shared /tmp
 * anyone could otherwise plant the state, lock or temporary files. Pass
 * --state memory: for a purely in-memory run.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shop.h"

/* Whether the state store is chosen elsewhere (the default directory is
 * then neither created nor checked). */
static bool state_given(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--state", 7) == 0 || strncmp(argv[i], "--config", 8) == 0)
            return true;
    return getenv("LOOM_STATE") || getenv("LOOM_CONFIG");
}

int main(int argc, char **argv)
{
    const loom_service_def *const *services =
        LOOM_SERVICES(&shop_users, &shop_orders, &shop_payments, &shop_notifications);
    /* The default state, under the file, the environment and the flags. */
    const char *tmp = getenv("TMPDIR");
    char dir[400], state[512];
    snprintf(dir, sizeof dir, "%s/loom-shop-%u", tmp && *tmp ? tmp : "/tmp", (unsigned)getuid());
    if (!state_given(argc, argv)) {
        /* Ours and private, or refused: never state that someone else could
         * have planted or can read. */
        struct stat st;
        if ((mkdir(dir, 0700) != 0 && errno != EEXIST) || lstat(dir, &st) != 0 ||
            !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
            fprintf(stderr,
                    "%s: the state directory %s is not a private directory of this user (mode "
                    "0700); remove it or pass --state\n",
                    argv[0], dir);
            return 2;
        }
    }
    snprintf(state, sizeof state, "state.url=file:%s/state.json", dir);
    loom_main_options opts = LOOM_MAIN_OPTIONS_INIT(
            .name = "shop", .version = SHOP_VERSION,
            .description = "The loom shop example: users, orders, payments and notifications",
            .defaults = (const char *const[]){state, "http.openapi.license.name=MIT",
                                              "http.openapi.license.identifier=MIT",
                                              "http.openapi.contact.name=The loom authors", NULL}, );
    return loom_main_with(argc, argv, services, &opts);
}
