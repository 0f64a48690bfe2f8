/* `sandgate test SCRIPT CASES`: runs a cases file against a script. The
 * file's format, the comparisons and the report are lua/sandgate/cases.lua,
 * in a trusted Lua state of this command's own; the script itself runs in
 * a VM built by the server's loader, and every case is asked through the
 * explain functions of the APIs. Exit 0 when every case passed, 1 when one
 * failed (or the script does not load), 2 for a usage error or a malformed
 * cases file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "egress/explain.h"
#include "ingress/routing.h"
#include "script/trusted.h"
#include "tools/tools.h"
#include "util/file.h"

/* clang-format off */
static const char usage[] =
    "usage: sandgate test SCRIPT CASES [flags]\n"
    "\n"
    "Runs the cases of the JSON file CASES against SCRIPT, loaded as the server\n"
    "loads it, and prints one line per case and \"N passed, M failed\". A failed\n"
    "case shows what it expected and what the script did. Exit 0 only when\n"
    "every case passed. The cases file's format is in README.md (\"Cases\n"
    "files\"); its policy, always, routes and config fields replace the\n"
    "flags' inputs.\n"
    "\n"
    "flags: those of `sandgate check` (see sandgate check --help)\n";
/* clang-format on */

typedef struct {
  sg_tool_t t;
  sg_vm_t *vm;
} runner_t;

static runner_t *runner(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* Reads an optional string argument (nil -> NULL). */
static const char *opt_str(lua_State *L, int i) {
  return lua_isnoneornil(L, i) ? NULL : luaL_checkstring(L, i);
}

/* build(policy_json, always) for egress, build(config_json) for ingress:
 * true, or nil and the load's errors. */
static int l_build(lua_State *L) {
  runner_t *r = runner(L);
  char err[8192];
  sg_vm_t *vm = NULL;
  int rc;
  if (r->t.kind == SG_VM_KIND_INGRESS) {
    rc = sg_tool_build(&r->t, NULL, NULL, luaL_checkstring(L, 1), &vm, err,
                       sizeof(err));
  } else {
    char *always[3] = {NULL, NULL, NULL};
    int lists = lua_istable(L, 2);
    static const char *const keys[3] = {"deny", "allow", "log_skip"};
    for (int i = 0; lists && i < 3; i++) {
      lua_getfield(L, 2, keys[i]);
      always[i] = (char *)lua_tostring(L, -1);
      lua_pop(L, 1); /* the table keeps the string alive */
    }
    rc = sg_tool_build(&r->t, opt_str(L, 1), lists ? always : NULL, NULL, &vm,
                       err, sizeof(err));
  }
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  sg_vm_unref(r->vm);
  r->vm = vm;
  lua_pushboolean(L, 1);
  return 1;
}

/* Runs fn's explanation into a string on the Lua stack: the JSON, or nil
 * and the problem. */
static int push_explanation(lua_State *L, char *json, size_t len, int rc,
                            const char *err) {
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, rc == -EINVAL ? err : "out of memory");
  } else {
    lua_pushlstring(L, json, len);
  }
  free(json);
  return rc ? 2 : 1;
}

/* explain(name, qtype, client, transport) -> JSON | nil, problem */
static int l_explain_egress(lua_State *L) {
  runner_t *r = runner(L);
  sg_egress_question_t q = {
      .name = luaL_checkstring(L, 1),
      .qtype = opt_str(L, 2),
      .client = opt_str(L, 3),
      .transport = opt_str(L, 4),
  };
  char *json = NULL, err[600];
  size_t len = 0;
  FILE *f = open_memstream(&json, &len);
  int rc = f ? sg_egress_explain(r->vm, &q, f, err, sizeof(err)) : -ENOMEM;
  if (f)
    fclose(f);
  return push_explanation(L, json, len, rc, err);
}

/* explain(method, target, client, headers) -> JSON; headers is the flat
 * array {name1, value1, ...} of sandgate.cases' requests. */
static int l_explain_ingress(lua_State *L) {
  runner_t *r = runner(L);
  sg_proxy_header_t hdrs[128];
  size_t n = 0, len = 0;
  size_t count = lua_objlen(L, 4) / 2;
  for (size_t i = 0; i < count && n < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
    lua_rawgeti(L, 4, (int)(2 * i + 1));
    lua_rawgeti(L, 4, (int)(2 * i + 2));
    /* The array holds these strings for the whole call. */
    hdrs[n].name = lua_tolstring(L, -2, &hdrs[n].name_len);
    hdrs[n].value = lua_tolstring(L, -1, &hdrs[n].value_len);
    lua_pop(L, 2);
    if (hdrs[n].name && hdrs[n].value)
      n++;
  }
  size_t tlen;
  const char *target = luaL_checklstring(L, 2, &tlen);
  sg_proxy_request_t req = {
      .method = luaL_checkstring(L, 1),
      .target = target,
      .target_len = tlen,
      .client_ip = luaL_checkstring(L, 3),
      .headers = hdrs,
      .nheaders = n,
  };
  char *json = NULL;
  FILE *f = open_memstream(&json, &len);
  if (f) {
    sg_ingress_explain(r->vm, &req, NULL, f);
    fclose(f);
  }
  return push_explanation(L, json, len, f ? 0 : -ENOMEM, NULL);
}

static int l_write(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  fwrite(s, 1, n, stdout);
  fputc('\n', stdout);
  return 0;
}

int sg_test_main(int argc, char **argv) {
  runner_t r;
  memset(&r, 0, sizeof(r));
  char err[8192];
  int rc = sg_tool_init(&r.t, argc, argv, 2, usage, err, sizeof(err));
  if (rc == 1 || rc == 2) {
    if (rc == 2)
      fprintf(stderr, "sandgate test: %s\n", err);
    sg_tool_free(&r.t);
    return rc == 1 ? 0 : 2;
  }
  if (rc) {
    /* As sandgate.cases reports a load that fails (without the count: the
     * cases file is not read without the script's kind). */
    puts("not ok - the script does not load:");
    sg_tool_print_errors(&r.t, "#   ", err);
    sg_tool_free(&r.t);
    return 1;
  }
  char *cases = NULL, *cfg = NULL;
  lua_State *L = NULL;
  int status = 2;
  if (sg_file_read(r.t.args[1], &cases, NULL, err, sizeof(err)) ||
      sg_trusted_open(r.t.data_dir, "sandgate.cases", &L, err, sizeof(err))) {
    fprintf(stderr, "sandgate test: %s\n", err);
    goto out;
  }
  if (r.t.kind == SG_VM_KIND_INGRESS &&
      !(cfg = sg_ingress_config_json(&r.t.ingress, err, sizeof(err)))) {
    fprintf(stderr, "sandgate test: %s\n", err);
    goto out;
  }
  int egress = r.t.kind == SG_VM_KIND_EGRESS;
  /* cases.run(text, name, kind, natives, base, write) */
  lua_getfield(L, 1, "run");
  lua_pushstring(L, cases);
  lua_pushstring(L, r.t.args[1]);
  lua_pushstring(L, egress ? "egress" : "ingress");
  lua_createtable(L, 0, 2);
  lua_pushlightuserdata(L, &r);
  lua_pushcclosure(L, l_build, 1);
  lua_setfield(L, -2, "build");
  lua_pushlightuserdata(L, &r);
  lua_pushcclosure(L, egress ? l_explain_egress : l_explain_ingress, 1);
  lua_setfield(L, -2, "explain");
  lua_createtable(L, 0, 1);
  if (cfg) {
    lua_pushstring(L, cfg);
    lua_setfield(L, -2, "config");
  }
  lua_pushcfunction(L, l_write);
  if (lua_pcall(L, 6, 2, 0) != 0) {
    fflush(stdout);
    fprintf(stderr, "sandgate test: %s\n", lua_tostring(L, -1));
    goto out;
  }
  status = lua_tointeger(L, -1) == 0 && lua_tointeger(L, -2) > 0 ? 0 : 1;

out:
  if (L)
    lua_close(L);
  sg_vm_unref(r.vm);
  free(cases);
  free(cfg);
  sg_tool_free(&r.t);
  return status;
}
