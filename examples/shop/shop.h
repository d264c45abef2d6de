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
 * The descriptors are plain `const` objects instead of LOOM_SERVICE's
 * `static const` so that main.c can list them; they are still only data.
 */
#ifndef SHOP_H
#define SHOP_H

#include <stdbool.h>
#include <stddef.h>

#include <loom.h>

extern const loom_service_def shop_users, shop_orders, shop_payments, shop_notifications;

/* Helpers shared by the services (main.c). */

/* Makes the next readable id "<prefix>-N" from the counter at seq_key in the
 * state store (atomic, so concurrent handlers never share an id). */
loom_err shop_next_id(loom_store *store, const char *seq_key, const char *prefix, char *out,
                      size_t n);

/* The current UTC time as "2026-01-02T03:04:05Z". */
void shop_timestamp(char out[32]);

/* Answers with result, taken over in every case (freed when the reply
 * cannot be sent; the runtime then answers 500). */
void shop_reply(loom_ctx *ctx, cJSON *result);

/* Answers with an error; data (may be NULL) is taken over in every case. */
void shop_fail(loom_ctx *ctx, int status, const char *message, cJSON *data);

/* Answers the error a failed store call deserves (503 when the store is
 * unreachable, 500 otherwise) and logs what was being done. */
void shop_fail_store(loom_ctx *ctx, const char *what, loom_err err);

/* A new object {"<key>": value}, or NULL when memory ran out: error data. */
cJSON *shop_detail(const char *key, const char *value);

#endif
