/* The greenhouse program: both services; configuration decides which run
 * here and over which broker (see greenhouse.yaml and README.md). */
#include "greenhouse.h"

int main(int argc, char **argv)
{
    loom_main_options opts =
        LOOM_MAIN_OPTIONS_INIT(.name = "greenhouse", .version = GREENHOUSE_VERSION,
                               .description = "Greenhouse sensors and alerts",
                               .config_file =
                                   "greenhouse.yaml", /* when present and no --config is given */
        );
    return loom_main_with(argc, argv, LOOM_SERVICES(&sensors_service, &alerts_service), &opts);
}
