/* A trusted Lua state: the plain standard library and the shipped modules,
 * for sandgate's own Lua (the policy API's semantics, the cases runner,
 * request descriptions). No user script ever runs in one; those run in the
 * sandboxed VMs of vm.h. */
#ifndef SG_SCRIPT_TRUSTED_H
#define SG_SCRIPT_TRUSTED_H

#include <stddef.h>

struct lua_State;

/* Opens a state whose modules come from <data_dir>/lua, requires `module`
 * and leaves its table at stack index 1. Returns 0, or a negative errno
 * with err naming the module and the problem (*out untouched). Close it
 * with lua_close. */
int sg_trusted_open(const char *data_dir, const char *module,
                    struct lua_State **out, char *err, size_t errlen);

#endif
