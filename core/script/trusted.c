#include "script/trusted.h"

#include <errno.h>
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int sg_trusted_open(const char *data_dir, const char *module, lua_State **out,
                    char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "cannot create a Lua state for %s", module);
    return -ENOMEM;
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", data_dir, data_dir);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushstring(L, module);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    snprintf(err, errlen, "cannot load %s: %s", module, lua_tostring(L, -1));
    lua_close(L);
    return -EINVAL;
  }
  *out = L;
  return 0;
}
