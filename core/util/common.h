/* Small helpers every subsystem uses. */
#ifndef SG_UTIL_COMMON_H
#define SG_UTIL_COMMON_H

#include <stddef.h>

/* From a pointer to an embedded member back to its owner (the libuv idiom:
 * handles are embedded in the struct that owns them). */
#define container_of(ptr, type, member)                                        \
  ((type *)((char *)(ptr)-offsetof(type, member)))

#define SG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
