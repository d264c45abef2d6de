/* greenhouse: the skeleton of a loom project (see README.md here).
 *
 *   sensors  record (POST /readings) stores a reading and announces it as
 *            the event readingRecorded; latest (GET /sensors/:sensor)
 *   alerts   onReading (subscription on readingRecorded) stores an alert
 *            when a value passes config.alerts.threshold; list (GET /alerts)
 */
#ifndef GREENHOUSE_H
#define GREENHOUSE_H

#include <loom.h>

#define GREENHOUSE_VERSION "0.1.0"

/* Defined with LOOM_SERVICE_EXTERN so that main.c and the tests see them. */
LOOM_SERVICE_DECLARE(sensors_service);
LOOM_SERVICE_DECLARE(alerts_service);

#endif
