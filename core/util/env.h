/* Environment variables as the configuration reads them. */
#ifndef SG_UTIL_ENV_H
#define SG_UTIL_ENV_H

#include <stdlib.h>

/* The value of a variable, or NULL when it is unset or empty (an empty
 * variable is no setting, as in OpenSandbox). */
static inline const char *sg_env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

#endif
