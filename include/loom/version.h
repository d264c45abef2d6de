/* loom — version numbers and the export macro. */
#ifndef LOOM_VERSION_H
#define LOOM_VERSION_H

#define LOOM_VERSION_MAJOR 0
#define LOOM_VERSION_MINOR 1
#define LOOM_VERSION_PATCH 0

/* 0xMMmmpp: compare with >= in preprocessor checks. */
#define LOOM_VERSION_HEX                                                      \
    ((LOOM_VERSION_MAJOR << 16) | (LOOM_VERSION_MINOR << 8) | LOOM_VERSION_PATCH)
#define LOOM_VERSION_STRING "0.1.0"

#if defined(__GNUC__) || defined(__clang__)
#define LOOM_API __attribute__((visibility("default")))
#define LOOM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define LOOM_API
#define LOOM_PRINTF(fmt, args)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the library actually linked, as "MAJOR.MINOR.PATCH".
 * Thread-safe; the string is static. */
LOOM_API const char *loom_version(void);

#ifdef __cplusplus
}
#endif
#endif
