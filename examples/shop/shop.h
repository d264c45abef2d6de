/*
 * The shop example: four small services that place an order end to end.
 *
 *   users          create (POST /users), get (GET /users/:id)
 *   orders         create (POST /orders): checks the user through users.get,
 *                  charges through payments.charge, stores the order and
 *                  announces it as the event orderCreated; get (GET /orders/:id)
 *   payments       charge (POST /payments)
 *   notifications  onOrderCreated (subscription on orderCreated) and
 *                  list (GET /notifications[?userId=u-1])
 *
 * Every service keeps its data in the runtime's state store (memory: by
 * default, a shared store when several instances run), never in globals, so
 * the same code runs monolithic or split across processes.
 *
 * The descriptors are defined with LOOM_SERVICE_EXTERN (LOOM_SERVICE makes
 * them static) and declared here with LOOM_SERVICE_DECLARE, so that main.c
 * and the tests can list them; they are still only data.
 */
#ifndef SHOP_H
#define SHOP_H

#include <stdbool.h>
#include <stddef.h>

#include <loom.h>

/* The program's version (--version, the OpenAPI document's info.version). */
#define SHOP_VERSION "1.0.0"

LOOM_SERVICE_DECLARE(shop_users);
LOOM_SERVICE_DECLARE(shop_orders);
LOOM_SERVICE_DECLARE(shop_payments);
LOOM_SERVICE_DECLARE(shop_notifications);

/* Helpers shared by the services (helpers.c). */

/* Makes the next readable id "<prefix>-N" from the counter at seq_key in the
 * state store (atomic, so concurrent handlers never share an id). */
loom_err shop_next_id(loom_store *store, const char *seq_key, const char *prefix, char *out,
                      size_t n);

/* The current UTC time as "2026-01-02T03:04:05Z". */
void shop_timestamp(char out[32]);

/* Answers the error a failed store call deserves (503 when the store is
 * unreachable, 500 otherwise) and logs what was being done. */
void shop_fail_store(loom_ctx *ctx, const char *what, loom_err err);

/* A new object {"<key>": value}, or NULL when memory ran out: error data. */
cJSON *shop_detail(const char *key, const char *value);

#endif
