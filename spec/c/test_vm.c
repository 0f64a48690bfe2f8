/* The Lua host: loading, verdicts, fail-closed errors, the time budget, the
 * memory cap and the sandbox, against real scripts written to a temp dir. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "script/vm.h"
#include "sgtest.h"

static char dir[] = "/tmp/sgvmtest.XXXXXX";

static const char *write_script(const char *name, const char *src) {
  static char path[256];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  fputs(src, f);
  fclose(f);
  return path;
}

static int build_with_budget(const char *path, const char *policy,
                             uint32_t call_budget_ms, sg_vm_t **vm, char *err,
                             size_t errlen) {
  sg_vm_opts_t o = {
      .data_dir = SG_DATA_DIR,
      .script_path = path,
      .policy_json = policy,
      .policy_len = policy ? strlen(policy) : 0,
      .mem_limit = 16u << 20,
      .call_budget_ms = call_budget_ms,
      .load_budget_ms = 500,
  };
  return sg_vm_new_egress(&o, vm, err, errlen);
}

static int build(const char *path, const char *policy, sg_vm_t **vm, char *err,
                 size_t errlen) {
  return build_with_budget(path, policy, 50, vm, err, errlen);
}

static sg_vm_status_t ask(sg_vm_t *vm, const char *name, sg_vm_verdict_t *v) {
  sg_vm_query_t q = {name, strlen(name), "A", "127.0.0.1", "udp", 1};
  return sg_vm_decide(vm, &q, v);
}

static void shipped_policy_decides(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *doc = "{\"defaultAction\":\"deny\",\"egress\":["
                    "{\"action\":\"allow\",\"target\":\"*.example.com\"},"
                    "{\"action\":\"allow\",\"target\":\"api.github.com\"}]}";
  int rc = build(SG_DATA_DIR "/policies/egress/default.lua", doc, &vm, err,
                 sizeof(err));
  if (rc)
    fprintf(stderr, "  %s\n", err);
  ASSERT_EQ(rc, 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "a.example.com", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT(strstr(v.rule, "egress[0]") != NULL);
  ASSERT_EQ(ask(vm, "example.com", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "api.github.com", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_EQ(ask(vm, "evil.org", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  sg_vm_unref(vm);
}

static void invalid_policy_names_the_problem(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  int rc = build(SG_DATA_DIR "/policies/egress/default.lua",
                 "{\"defaultAction\":\"maybe\"}", &vm, err, sizeof(err));
  ASSERT(rc < 0);
  ASSERT(vm == NULL);
  ASSERT(strstr(err, "invalid policy: ") == err);
  ASSERT(strstr(err, "maybe") != NULL);
  rc = build(SG_DATA_DIR "/policies/egress/default.lua", "{not json", &vm, err,
             sizeof(err));
  ASSERT(rc < 0);
  ASSERT(strstr(err, "invalid policy: not valid JSON") == err);
}

static void syntax_error_has_file_and_line(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("broken.lua", "local M = {}\n\nfunction M.decide(q\n"
                                 "  return 'allow'\nend\nreturn M\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "broken.lua:4:") != NULL);
}

static void decide_error_fails_closed(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("err.lua", "return { decide = function(q)\n"
                              "  if q.name == 'boom' then error('kaboom') end\n"
                              "  if q.name == 'weird' then return 42 end\n"
                              "  return 'allow' end }\n");
  ASSERT_EQ(build(p, NULL, &vm, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "boom", &v), SG_VM_ERR);
  ASSERT_EQ(v.allow, 0);
  ASSERT(strstr(v.error, "err.lua:2: kaboom") != NULL);
  ASSERT_EQ(ask(vm, "weird", &v), SG_VM_ERR);
  ASSERT_EQ(v.allow, 0);
  ASSERT(strstr(v.error, "decide returned 42") != NULL);
  /* The VM keeps working after errors. */
  ASSERT_EQ(ask(vm, "fine", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  sg_vm_unref(vm);
}

static void endless_loop_is_cut_off(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p = write_script(
      "loop.lua",
      "return { decide = function(q)\n"
      "  if q.name == 'spin' then while true do end end\n"
      "  if q.name == 'sneaky' then\n"
      "    while true do pcall(function() while true do end end) end\n"
      "  end\n"
      "  return 'allow' end }\n");
  ASSERT_EQ(build(p, NULL, &vm, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "spin", &v), SG_VM_TIMEOUT);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "sneaky", &v), SG_VM_TIMEOUT);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "ok", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  sg_vm_unref(vm);
}

static void endless_loop_at_load_is_refused(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("loadloop.lua", "while true do end\nreturn {}\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "time budget") != NULL);
}

static void memory_bomb_is_capped(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p = write_script(
      "bomb.lua",
      "return { decide = function(q)\n"
      "  if q.name == 'bomb' then local t = {}\n"
      "    for i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end end\n"
      "  if q.name == 'big' then local s = string.rep('x', 2^30) end\n"
      "  return 'allow' end }\n");
  ASSERT_EQ(build(p, NULL, &vm, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  sg_vm_status_t st = ask(vm, "bomb", &v);
  ASSERT(st == SG_VM_NOMEM || st == SG_VM_TIMEOUT);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "big", &v), SG_VM_NOMEM);
  ASSERT_EQ(v.allow, 0);
  ASSERT(sg_vm_mem_used(vm) <= (16u << 20));
  ASSERT_EQ(ask(vm, "ok", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  sg_vm_unref(vm);
}

/* Regression: a script that keeps its heap at the cap made the host's own
 * argument pushes for the next query fail outside any protected call, and
 * LuaJIT aborted the process. */
static void memory_held_at_cap_does_not_abort(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("hoard.lua", "local hoard = {}\n"
                                "return { decide = function(q)\n"
                                "  if q.name == 'fill' then\n"
                                "    for i = 1, 1e9 do hoard[#hoard + 1] = "
                                "string.rep('y', 900) .. i end\n"
                                "  end\n"
                                "  return 'allow' end }\n");
  /* A time budget the fill cannot run out of first, even on a loaded
   * sanitizer build: this case is about the memory cap. */
  ASSERT_EQ(build_with_budget(p, NULL, 20000, &vm, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "fill", &v), SG_VM_NOMEM);
  ASSERT_EQ(v.allow, 0);
  /* The hoard is still reachable: the heap stays at the cap. */
  for (int i = 0; i < 200; i++) {
    char name[32];
    snprintf(name, sizeof(name), "q%d.example", i);
    sg_vm_status_t st = ask(vm, name, &v);
    ASSERT(st == SG_VM_OK || st == SG_VM_NOMEM);
    if (st != SG_VM_OK)
      ASSERT_EQ(v.allow, 0);
  }
  sg_vm_unref(vm);
}

static void sandbox_blocks_escapes(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p = write_script(
      "escape.lua",
      "local probes = {\n"
      "  function() return os.execute('true') end,\n"
      "  function() return io.popen('true') end,\n"
      "  function() return debug.getinfo(1) end,\n"
      "  function() return require('ffi') end,\n"
      "  function() return require('sandgate.host') end,\n"
      "  function() return loadstring('return 1') end,\n"
      "  function() return load(string.dump(function() end)) end,\n"
      "  function() return load('return 1', 'x', 'b') end,\n"
      "  function() return getmetatable('').__index end,\n"
      "}\n"
      "local escaped = 0\n"
      "for i = 1, #probes do\n"
      "  local ok, r = pcall(probes[i])\n"
      "  if ok and r ~= nil then escaped = i end\n"
      "end\n"
      "return { decide = function(q)\n"
      "  if escaped ~= 0 then error('probe ' .. escaped .. ' escaped') end\n"
      "  return 'allow' end }\n");
  int rc = build(p, NULL, &vm, err, sizeof(err));
  if (rc)
    fprintf(stderr, "  %s\n", err);
  ASSERT_EQ(rc, 0);
  sg_vm_verdict_t v;
  sg_vm_status_t st = ask(vm, "x", &v);
  if (st)
    fprintf(stderr, "  %s\n", v.error);
  ASSERT_EQ(st, SG_VM_OK);
  sg_vm_unref(vm);
}

static void verdict_forms(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p = write_script(
      "forms.lua",
      "local A = { action = 'allow', rule = 'r1' }\n"
      "return { decide = function(q)\n"
      "  if q.name == 'a' then return A end\n"
      "  if q.name == 'b' then return true end\n"
      "  if q.name == 'c' then return false end\n"
      "  if q.name == 'd' then return { action = 'deny', rule = 'r4' } end\n"
      "  if q.name == 'e' then return { action = 'permit' } end\n"
      "  if q.name == 'f' then return { action = 'deny', rcode = 'NODATA' } "
      "end\n"
      "  if q.name == 'g' then return { action = 'deny', rcode = 'BOGUS' } "
      "end\n"
      "  if q.name == 'h' then return { action = 'deny', rcode = 'REFUSED' } "
      "end\n"
      "  if q.name == 'i' then return { action = 'allow', index = 3, "
      "target = '*.x.org' } end\n"
      "  return 'deny' end }\n");
  ASSERT_EQ(build(p, NULL, &vm, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "a", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_STREQ(v.rule, "r1");
  ASSERT_EQ(ask(vm, "b", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_STREQ(v.rule, "");
  ASSERT_EQ(ask(vm, "c", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "d", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_STREQ(v.rule, "r4");
  ASSERT_EQ(ask(vm, "e", &v), SG_VM_ERR);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(ask(vm, "f", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(v.rcode, 0);
  ASSERT_EQ(ask(vm, "g", &v), SG_VM_ERR);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(v.rcode, 3);
  ASSERT(strstr(v.error, "BOGUS") != NULL);
  ASSERT_EQ(ask(vm, "h", &v), SG_VM_OK);
  ASSERT_EQ(v.rcode, 5);
  /* A rule named by index + target is formatted on the C side, and only
   * when the caller wants it (it logs). */
  ASSERT_EQ(ask(vm, "i", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_STREQ(v.rule, "egress[3] allow *.x.org");
  sg_vm_query_t quiet = {"i", 1, "A", "127.0.0.1", "udp", 0};
  ASSERT_EQ(sg_vm_decide(vm, &quiet, &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_STREQ(v.rule, "");
  ASSERT_EQ(ask(vm, "z", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(v.rcode, 3);
  sg_vm_unref(vm);
}

static void missing_decide_is_refused(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("nodecide.lua", "return { load = function() end }\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "hook \"decide\" must be a function") != NULL);
  p = write_script("notable.lua", "return 7\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "must return a table of hooks") != NULL);
}

/* Builds with the always-lists and static_sets() (dns+nft, and check). */
static int build_full(const char *path, const char *policy, const char *deny,
                      const char *allow, sg_vm_t **vm, char *err,
                      size_t errlen) {
  sg_vm_opts_t o = {
      .data_dir = SG_DATA_DIR,
      .script_path = path,
      .policy_json = policy,
      .policy_len = policy ? strlen(policy) : 0,
      .always_text = {deny, allow, NULL},
      .mem_limit = 16u << 20,
      .call_budget_ms = 50,
      .load_budget_ms = 300,
      .want_statics = 1,
  };
  return sg_vm_new_egress(&o, vm, err, errlen);
}

/* Every load error names the file, the line and the stage it came from. */
static void load_errors_name_the_stage(void) {
  char err[2048];
  sg_vm_t *vm = NULL;
  const char *p = write_script("stage.lua", "local M = {}\n"
                                            "error('at the top')\n"
                                            "return M\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "stage.lua:2: in main chunk: ") != NULL);
  ASSERT(strstr(err, "at the top") != NULL);
  p = write_script("stage.lua", "local M = {}\n"
                                "function M.decide() return 'allow' end\n"
                                "function M.load(doc)\n"
                                "  return doc.nothing.here\n"
                                "end\n"
                                "return M\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "stage.lua:4: in load(): attempt to index") != NULL);
  /* Raised by a shipped module, without a position: the script's line that
   * called it is found on the stack. */
  p = write_script("stage.lua",
                   "local rules = require 'sandgate.rules'\n"
                   "local M = {}\n"
                   "function M.decide() return 'allow' end\n"
                   "function M.selftest()\n"
                   "  rules.compile({ egress = { { target = 'a b' } } })\n"
                   "end\n"
                   "return M\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "stage.lua:5: in selftest(): invalid policy: ") != NULL);
  p = write_script("stage.lua",
                   "local M = {}\n"
                   "function M.decide() return 'allow' end\n"
                   "function M.static_sets() error('no sets') end\n"
                   "return M\n");
  ASSERT(build_full(p, NULL, NULL, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "stage.lua:3: in static_sets(): ") != NULL);
}

/* Independent failures (selftest and static_sets) are all reported, one
 * per line; so are all the bad hooks. */
static void load_reports_every_error(void) {
  char err[2048];
  sg_vm_t *vm = NULL;
  const char *p =
      write_script("two.lua", "local M = {}\n"
                              "function M.decide() return 'allow' end\n"
                              "function M.selftest() error('self') end\n"
                              "function M.static_sets() error('sets') end\n"
                              "return M\n");
  ASSERT(build_full(p, NULL, NULL, NULL, &vm, err, sizeof(err)) < 0);
  const char *second = strchr(err, '\n');
  ASSERT(strstr(err, "two.lua:3: in selftest(): self\n") != NULL);
  ASSERT(second && strstr(second, "two.lua:4: in static_sets(): sets"));
  p = write_script("hooks.lua", "return { decide = 1, load = 'x' }\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "hook \"decide\" must be a function, got number\n") !=
         NULL);
  ASSERT(strstr(err, "hook \"load\" must be a function, got string") != NULL);
}

/* Running out of time or memory while loading names the stage; the time
 * budget also names the line where the script was cut off. */
static void load_limits_name_the_stage(void) {
  char err[2048];
  sg_vm_t *vm = NULL;
  const char *p = write_script("slow.lua", "local M = {}\n"
                                           "function M.decide() end\n"
                                           "function M.load()\n"
                                           "  while true do end\n"
                                           "end\n"
                                           "return M\n");
  ASSERT(build(p, NULL, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "slow.lua:4: in load(): script exceeded its time "
                     "budget of 500 ms") != NULL);
  p = write_script("fat.lua", "local M = {}\n"
                              "function M.decide() end\n"
                              "function M.load()\n"
                              "  local t = {}\n"
                              "  for i = 1, 1e9 do t[i] = ('x'):rep(64) .. i "
                              "end\n"
                              "end\n"
                              "return M\n");
  ASSERT(build_with_budget(p, NULL, 50, &vm, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "fat.lua: in load(): script exceeded its memory limit "
                     "of 16 MiB") != NULL ||
         strstr(err, "time budget") != NULL);
}

static void script_kind_from_hooks(void) {
  char err[512];
  sg_vm_kind_t kind = 0;
  sg_vm_opts_t o = {.data_dir = SG_DATA_DIR, .load_budget_ms = 500};
  o.script_path = SG_DATA_DIR "/policies/egress/default.lua";
  ASSERT_EQ(sg_vm_script_kind(&o, &kind, err, sizeof(err)), 0);
  ASSERT_EQ(kind, SG_VM_KIND_EGRESS);
  o.script_path = SG_DATA_DIR "/policies/ingress/uri.lua";
  ASSERT_EQ(sg_vm_script_kind(&o, &kind, err, sizeof(err)), 0);
  ASSERT_EQ(kind, SG_VM_KIND_INGRESS);
  o.script_path = write_script("both.lua", "return { decide = function() end,"
                                           " route = function() end }\n");
  ASSERT(sg_vm_script_kind(&o, &kind, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "has both") != NULL);
  o.script_path = write_script("none.lua", "return {}\n");
  ASSERT(sg_vm_script_kind(&o, &kind, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "has neither") != NULL);
  o.script_path = write_script("spin.lua", "while true do end\n");
  ASSERT(sg_vm_script_kind(&o, &kind, err, sizeof(err)) < 0);
  ASSERT(strstr(err, "spin.lua:1: in main chunk: script exceeded its time "
                     "budget") != NULL);
}

/* The verdict says where a decision came from, and which entry of which
 * list made it. */
static void verdict_source(void) {
  char err[512];
  sg_vm_t *vm = NULL;
  const char *doc = "{\"defaultAction\":\"deny\",\"egress\":["
                    "{\"action\":\"allow\",\"target\":\"*.example.com\"},"
                    "{\"action\":\"deny\",\"target\":\"x.example.org\"}]}";
  int rc = build_full(SG_DATA_DIR "/policies/egress/default.lua", doc,
                      "# operators\nbad.example.com\n", "\nok.example.net\n",
                      &vm, err, sizeof(err));
  if (rc)
    fprintf(stderr, "  %s\n", err);
  ASSERT_EQ(rc, 0);
  sg_vm_verdict_t v;
  ASSERT_EQ(ask(vm, "a.example.com", &v), SG_VM_OK);
  ASSERT_EQ(v.source, SG_VM_SOURCE_POLICY);
  ASSERT_EQ(v.index, 0);
  ASSERT_STREQ(v.target, "*.example.com");
  ASSERT_STREQ(v.rule, "egress[0] allow *.example.com");
  ASSERT_EQ(ask(vm, "bad.example.com", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 0);
  ASSERT_EQ(v.source, SG_VM_SOURCE_DENY_ALWAYS);
  ASSERT_EQ(v.index, 0);
  ASSERT_STREQ(v.rule, "deny.always:2 bad.example.com");
  ASSERT_EQ(ask(vm, "ok.example.net", &v), SG_VM_OK);
  ASSERT_EQ(v.allow, 1);
  ASSERT_EQ(v.source, SG_VM_SOURCE_ALLOW_ALWAYS);
  ASSERT_STREQ(v.rule, "allow.always:2 ok.example.net");
  ASSERT_EQ(ask(vm, "x.example.org", &v), SG_VM_OK);
  ASSERT_EQ(v.index, 1);
  ASSERT_STREQ(v.rule, "egress[1] deny x.example.org");
  ASSERT_EQ(ask(vm, "elsewhere.test", &v), SG_VM_OK);
  ASSERT_EQ(v.source, SG_VM_SOURCE_POLICY);
  ASSERT_EQ(v.index, -1);
  ASSERT_STREQ(v.rule, "default");
  sg_vm_unref(vm);
}

/* The budget's watchdog: a call is cut off soon after its budget (50 ms
 * here) and on whichever thread it runs; calls after a cut-off run with no
 * hook left behind. */
typedef struct {
  sg_vm_t *vm;
  sg_vm_status_t st;
  uint64_t ms;
} spin_arg_t;

static void *spin_on_thread(void *arg) {
  spin_arg_t *a = arg;
  sg_vm_verdict_t v;
  uint64_t t0 = uv_hrtime();
  a->st = ask(a->vm, "spin", &v);
  a->ms = (uv_hrtime() - t0) / 1000000u;
  return NULL;
}

static void budget_watchdog_cuts_off_on_any_thread(void) {
  char err[512];
  sg_vm_t *vm = NULL, *vm2 = NULL;
  const char *p = write_script(
      "spin.lua", "return { decide = function(q)\n"
                  "  if q.name == 'spin' then while true do end end\n"
                  "  return 'allow' end }\n");
  ASSERT_EQ(build(p, NULL, &vm, err, sizeof(err)), 0);
  ASSERT_EQ(build(p, NULL, &vm2, err, sizeof(err)), 0);
  sg_vm_verdict_t v;
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(ask(vm, "spin", &v), SG_VM_TIMEOUT);
  uint64_t ms = (uv_hrtime() - t0) / 1000000u;
  ASSERT(ms >= 50 && ms < 1000);
  /* Two VMs spinning at once, one on another thread. */
  spin_arg_t a = {vm2, SG_VM_OK, 0};
  pthread_t t;
  ASSERT_EQ(pthread_create(&t, NULL, spin_on_thread, &a), 0);
  ASSERT_EQ(ask(vm, "spin", &v), SG_VM_TIMEOUT);
  pthread_join(t, NULL);
  ASSERT_EQ(a.st, SG_VM_TIMEOUT);
  ASSERT(a.ms >= 50 && a.ms < 1000);
  /* No hook stays behind: many quick calls, all allowed. */
  for (int i = 0; i < 20000; i++) {
    ASSERT_EQ(ask(vm, "ok", &v), SG_VM_OK);
    ASSERT_EQ(v.allow, 1);
  }
  sg_vm_unref(vm);
  sg_vm_unref(vm2);
}

/* What a routing script sees of a request, built in C: header names in
 * lower case with repeats joined in order, the target split at its first
 * '?' (the same as request_args in lua/sandgate/ingress/host.lua). */
static void route_request_as_scripts_see_it(void) {
  char err[512];
  const char *p = write_script(
      "seen.lua",
      "return { route = function(req)\n"
      "  return { status = 400, message = req.headers['x-multi'] .. '|' ..\n"
      "    req.host .. '|' .. req.path .. '|' .. tostring(req.query) .. '|' "
      "..\n"
      "    req.method .. '|' .. req.client .. '|' .. tostring(req.headers.X) "
      "}\n"
      "end }\n");
  sg_vm_opts_t o = {.data_dir = SG_DATA_DIR,
                    .script_path = p,
                    .mem_limit = 16u << 20,
                    .call_budget_ms = 50,
                    .load_budget_ms = 500};
  sg_vm_t *vm = NULL;
  ASSERT_EQ(sg_vm_new_ingress(&o, NULL, &vm, err, sizeof(err)), 0);
  sg_proxy_header_t h[] = {{"X-Multi", "1", 7, 1},
                           {"HOST", "gw:80", 4, 5},
                           {"x-MULTI", "2", 7, 1},
                           {"X-Multi", "", 7, 0}};
  sg_proxy_request_t req = {.method = "POST",
                            .target = "/a%2Fb?x=1?y",
                            .target_len = 12,
                            .client_ip = "10.0.0.9",
                            .headers = h,
                            .nheaders = 4};
  sg_proxy_route_t out;
  sg_vm_route(vm, &req, &out);
  ASSERT_EQ(out.status, 400);
  ASSERT_STREQ(out.message, "1, 2, |gw:80|/a%2Fb|x=1?y|POST|10.0.0.9|nil");
  req.target = "/p";
  req.target_len = 2;
  req.nheaders = 2;
  sg_vm_route(vm, &req, &out);
  ASSERT_STREQ(out.message, "1|gw:80|/p|nil|POST|10.0.0.9|nil");
  sg_vm_unref(vm);
}

static const sg_test_case_t cases[] = {
    {"shipped_policy_decides", shipped_policy_decides},
    {"invalid_policy_names_the_problem", invalid_policy_names_the_problem},
    {"syntax_error_has_file_and_line", syntax_error_has_file_and_line},
    {"decide_error_fails_closed", decide_error_fails_closed},
    {"endless_loop_is_cut_off", endless_loop_is_cut_off},
    {"endless_loop_at_load_is_refused", endless_loop_at_load_is_refused},
    {"route_request_as_scripts_see_it", route_request_as_scripts_see_it},
    {"budget_watchdog_cuts_off_on_any_thread",
     budget_watchdog_cuts_off_on_any_thread},
    {"memory_bomb_is_capped", memory_bomb_is_capped},
    {"memory_held_at_cap_does_not_abort", memory_held_at_cap_does_not_abort},
    {"sandbox_blocks_escapes", sandbox_blocks_escapes},
    {"verdict_forms", verdict_forms},
    {"missing_decide_is_refused", missing_decide_is_refused},
    {"load_errors_name_the_stage", load_errors_name_the_stage},
    {"load_reports_every_error", load_reports_every_error},
    {"load_limits_name_the_stage", load_limits_name_the_stage},
    {"script_kind_from_hooks", script_kind_from_hooks},
    {"verdict_source", verdict_source},
    {NULL, NULL},
};

int main(void) {
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  int rc = sg_test_run(cases);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return rc;
}
