/* The split suite of test_split.c over NATS: the same tests, on one
 * nats-server instead of mosquitto, plus the three-node cluster test. See
 * test_split.c for what each test does and how the brokers differ. */
#define SPLIT_NATS 1
#include "test_split.c"
