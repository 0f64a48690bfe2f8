#include "script/vm.h"

#include <errno.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "util/file.h"
#include "util/log.h"

/* Scripts bigger than this are refused before Lua sees them. */
#define SCRIPT_MAX_BYTES (4u << 20)
/* Once a call is past its deadline, the budget hook runs every this many
 * interpreted instructions (the host's error path gets that much room
 * before it is cut off again). */
#define HOOK_EVERY 1000
/* How often the watchdog looks at the calls in flight: a call is stopped
 * at most this long after its budget ran out. */
#define WATCH_EVERY_MS 5

struct sg_vm {
  lua_State *L;
  int refs;
  size_t mem_used;
  size_t mem_limit;
  _Atomic uint64_t deadline_ns; /* 0 while no call is running */
  pthread_t thread;             /* the thread of the call in flight */
  atomic_int signalled;         /* the watchdog signalled this call */
  volatile sig_atomic_t hooked; /* the budget hook is set */
  sg_vm_t *wd_prev, *wd_next;   /* in the watchdog's list */
  uint32_t call_budget_ms;
  int timed_out;
  int enforce; /* the memory cap applies: script code is running */
  int has_statics;
  sg_nft_static_t statics;
};

/* The allocator is the memory cap: LuaJIT turns a NULL into a "not enough
 * memory" error in the script, and the state stays usable. Shrinking and
 * freeing always succeed. The cap is enforced only while script code runs
 * (inside our protected calls): the few bytes the host pushes before a call
 * must never fail, since an error there would be unprotected. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sg_vm_t *vm = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    vm->mem_used -= old;
    return NULL;
  }
  if (vm->enforce && nsize > old &&
      vm->mem_used + (nsize - old) > vm->mem_limit)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (!p)
    return NULL;
  vm->mem_used = vm->mem_used - old + nsize;
  return p;
}

static sg_vm_t *vm_of(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

/* ---- the time budget ----
 *
 * A count hook on every call would run each instruction through LuaJIT's
 * hook dispatcher and keep the JIT from compiling the host's own modules:
 * measured, the gateway's routing call took 8k instructions per request,
 * a third of the whole request. So no hook is set while calls keep to their
 * budget. A watchdog thread looks at the calls in flight every
 * WATCH_EVERY_MS and signals the thread of one that overran; the signal
 * handler, on that thread, sets the count hook (as LuaJIT's own SIGINT
 * handler does), and the hook stops the script at its next interpreted
 * instruction. Script code is never compiled (host.lua turns the JIT off
 * for the chunk and every function it defines), so it always reaches the
 * hook. */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static sg_vm_t *wd_vms;
static pthread_once_t wd_once = PTHREAD_ONCE_INIT;
static int wd_signal_no;
/* The VM whose call runs on this thread, for the signal handler. */
static __thread sg_vm_t *tls_running;

static void budget_hook(lua_State *L, lua_Debug *ar);

static void wd_on_signal(int sig) {
  (void)sig;
  sg_vm_t *vm = tls_running;
  if (vm && !vm->hooked) {
    vm->hooked = 1;
    lua_sethook(vm->L, budget_hook, LUA_MASKCOUNT, 1);
  }
}

static void *wd_main(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec ts = {0, WATCH_EVERY_MS * 1000000L};
    nanosleep(&ts, NULL);
    uint64_t now = uv_hrtime();
    pthread_mutex_lock(&wd_lock);
    for (sg_vm_t *v = wd_vms; v; v = v->wd_next) {
      uint64_t d = atomic_load(&v->deadline_ns);
      if (d && now > d && !atomic_exchange(&v->signalled, 1))
        pthread_kill(v->thread, wd_signal_no);
    }
    pthread_mutex_unlock(&wd_lock);
  }
  return NULL;
}

static void wd_start(void) {
  wd_signal_no = SIGRTMIN + 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = wd_on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* The watchdog itself never takes the signal. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  if (sigaction(wd_signal_no, &sa, NULL) != 0 ||
      pthread_create(&t, &attr, wd_main, NULL) != 0)
    sg_log_msg(SG_LOG_ERROR, "script.watchdog",
               "cannot start the script watchdog: scripts have no time "
               "budget");
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
}

static void wd_add(sg_vm_t *vm) {
  pthread_once(&wd_once, wd_start);
  pthread_mutex_lock(&wd_lock);
  vm->wd_prev = NULL;
  vm->wd_next = wd_vms;
  if (wd_vms)
    wd_vms->wd_prev = vm;
  wd_vms = vm;
  pthread_mutex_unlock(&wd_lock);
}

static void wd_remove(sg_vm_t *vm) {
  pthread_mutex_lock(&wd_lock);
  if (vm->wd_prev)
    vm->wd_prev->wd_next = vm->wd_next;
  else if (wd_vms == vm)
    wd_vms = vm->wd_next;
  if (vm->wd_next)
    vm->wd_next->wd_prev = vm->wd_prev;
  pthread_mutex_unlock(&wd_lock);
}

/* lua_pcall under the memory cap and a time budget. */
static int vm_call(sg_vm_t *vm, int nargs, int nres, uint32_t budget_ms) {
  vm->timed_out = 0;
  vm->thread = pthread_self();
  atomic_store(&vm->signalled, 0);
  atomic_store(&vm->deadline_ns, uv_hrtime() + (uint64_t)budget_ms * 1000000u);
  tls_running = vm;
  vm->enforce = 1;
  int rc = lua_pcall(vm->L, nargs, nres, 0);
  vm->enforce = 0;
  tls_running = NULL;
  atomic_store(&vm->deadline_ns, 0);
  if (vm->hooked) {
    lua_sethook(vm->L, NULL, 0, 0);
    vm->hooked = 0;
  }
  return rc;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  sg_vm_t *vm = vm_of(L);
  uint64_t d = atomic_load(&vm->deadline_ns);
  if (!d || uv_hrtime() <= d) {
    /* A signal meant for a call that ended as it came. */
    lua_sethook(L, NULL, 0, 0);
    vm->hooked = 0;
    return;
  }
  vm->timed_out = 1;
  /* From here on, every HOOK_EVERY instructions. */
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  /* Level 0 is the function the hook interrupted (luaL_error would name
   * its caller): the message says where the script was cut off. */
  luaL_where(L, 0);
  lua_pushstring(L, "script exceeded its time budget");
  lua_concat(L, 2);
  lua_error(L);
}

/* An error outside any protected call is a bug in the host, never a script's
 * doing: say what it was before the process ends. */
static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  sg_log_msg(SG_LOG_ERROR, "script.panic", "unprotected Lua error: %s",
             msg ? msg : "(not a string)");
  abort();
}

/* sha256(bytes) -> 32 raw bytes: for signed routes. (Also what keeps
 * libcrypto linked, so the FFI finds its symbols in the process.) */
static int l_sha256(lua_State *L) {
  size_t n;
  const char *d = luaL_checklstring(L, 1, &n);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)d, n, md);
  lua_pushlstring(L, (const char *)md, sizeof(md));
  return 1;
}

static int l_budget_exceeded(lua_State *L) {
  lua_pushboolean(L, vm_of(L)->timed_out);
  return 1;
}

/* log sink for sandgate.log: (level, event, fields) where fields is a table
 * that is encoded with cjson on the Lua side of this call. */
static int l_log(lua_State *L) {
  const char *level_s = luaL_checkstring(L, 1);
  const char *event = luaL_checkstring(L, 2);
  int level = sg_log_parse_level(level_s);
  if (level < 0)
    level = SG_LOG_INFO;
  if (!sg_log_enabled((sg_log_level_t)level))
    return 0;
  size_t flen = 0;
  const char *fields = NULL;
  if (lua_istable(L, 3)) {
    lua_getfield(L, LUA_REGISTRYINDEX, "sg.cjson_encode");
    lua_pushvalue(L, 3);
    if (lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1))
      fields = lua_tolstring(L, -1, &flen);
  }
  sg_logline_t line;
  sg_log_begin(&line, (sg_log_level_t)level, event);
  sg_log_str(&line, "source", "script");
  if (fields)
    sg_log_merge(&line, fields, flen);
  sg_log_end(&line);
  return 0;
}

static void vm_free(sg_vm_t *vm) {
  wd_remove(vm);
  if (vm->L)
    lua_close(vm->L);
  if (vm->has_statics)
    sg_nft_static_free(&vm->statics);
  free(vm);
}

/* Runs the function on top of the stack with nargs below it under the load
 * budget; on error copies the message into err. The host's messages already
 * name the file, line and stage, and the limit that was hit (see
 * lua/sandgate/host.lua); the fallbacks here are for an error that escaped
 * it (an allocation failing in the host's own code). */
static int call_bounded(sg_vm_t *vm, int nargs, int nres, uint32_t budget_ms,
                        char *err, size_t errlen) {
  lua_State *L = vm->L;
  int rc = vm_call(vm, nargs, nres, budget_ms);
  if (rc == 0)
    return 0;
  const char *msg = lua_tostring(L, -1);
  if (rc == LUA_ERRMEM)
    snprintf(err, errlen, "script exceeded its memory limit of %zu MiB",
             vm->mem_limit >> 20);
  else if (msg)
    snprintf(err, errlen, "%s", msg);
  else if (vm->timed_out)
    snprintf(err, errlen, "script exceeded its time budget of %u ms",
             budget_ms);
  else
    snprintf(err, errlen, "unknown error (a script raised a %s)",
             luaL_typename(L, -1));
  lua_pop(L, 1);
  return -EINVAL;
}

/* Appends the addresses of one array field of the statics table at idx to
 * set (whose family the field must have); `where` starts a message about a
 * bad entry. */
static int read_list(lua_State *L, int idx, const char *field, sg_ipset_t *set,
                     const char *where, char *err, size_t errlen) {
  lua_getfield(L, idx, field);
  int rc = 0;
  size_t n = lua_objlen(L, -1);
  for (size_t i = 1; i <= n && !rc; i++) {
    lua_rawgeti(L, -1, (int)i);
    const char *text = lua_tostring(L, -1);
    sg_range_t r;
    int fam = text ? sg_range_parse(text, &r) : 0;
    if (fam != set->family) {
      snprintf(err, errlen,
               "%s%s[%zu] is %s%s%s, expected an IPv%d address or CIDR", where,
               field, i, text ? "\"" : "", text ? text : "not a string",
               text ? "\"" : "", set->family);
      rc = -EINVAL;
    } else if (sg_ipset_add(set, &r)) {
      snprintf(err, errlen, "out of memory");
      rc = -ENOMEM;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return rc;
}

/* Converts host.statics' table at idx into st (see sg_vm_statics). A bad
 * entry of the script's lists is reported as a load error of the script
 * (named by file), in static_sets(). */
static int read_statics(lua_State *L, int idx, sg_nft_static_t *st,
                        const char *file, char *err, size_t errlen) {
  char script_where[1100];
  snprintf(script_where, sizeof(script_where), "%s: in static_sets(): ", file);
  static const char *const fam_suffix[2] = {"v4", "v6"};
  lua_getfield(L, idx, "default");
  const char *def = lua_tostring(L, -1);
  st->default_allow = def && strcmp(def, "allow") == 0;
  lua_pop(L, 1);
  int rc = 0;
  for (int f = 0; f < 2 && !rc; f++) {
    char field[32];
    sg_ipset_t always_allow, always_deny;
    sg_ipset_init(&always_allow, f ? 6 : 4);
    sg_ipset_init(&always_deny, f ? 6 : 4);
    snprintf(field, sizeof(field), "allow_%s", fam_suffix[f]);
    rc = read_list(L, idx, field, &st->allow[f], script_where, err, errlen);
    snprintf(field, sizeof(field), "deny_%s", fam_suffix[f]);
    if (!rc)
      rc = read_list(L, idx, field, &st->deny[f], script_where, err, errlen);
    snprintf(field, sizeof(field), "always_allow_%s", fam_suffix[f]);
    if (!rc)
      rc = read_list(L, idx, field, &always_allow, "allow.always: ", err,
                     errlen);
    snprintf(field, sizeof(field), "always_deny_%s", fam_suffix[f]);
    if (!rc)
      rc = read_list(L, idx, field, &always_deny, "deny.always: ", err, errlen);
    if (!rc) {
      sg_ipset_normalize(&st->allow[f]);
      sg_ipset_normalize(&st->deny[f]);
      sg_ipset_normalize(&always_allow);
      sg_ipset_normalize(&always_deny);
      if (sg_ipset_subtract(&st->deny[f], &always_allow) ||
          sg_ipset_merge(&st->deny[f], &always_deny) ||
          sg_ipset_merge(&st->allow[f], &always_allow)) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
      }
    }
    sg_ipset_free(&always_allow);
    sg_ipset_free(&always_deny);
  }
  return rc;
}

const sg_nft_static_t *sg_vm_statics(const sg_vm_t *vm) {
  return vm && vm->has_statics ? &vm->statics : NULL;
}

/* A new state with the sandbox host loaded: sandgate.host required and
 * initialized with the natives, its table on top of the stack. */
static int vm_open(const sg_vm_opts_t *o, sg_vm_t **out, uint32_t *budget,
                   char *err, size_t errlen) {
  sg_vm_t *vm = calloc(1, sizeof(*vm));
  if (!vm) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  vm->refs = 1;
  vm->mem_limit = o->mem_limit ? o->mem_limit : SG_VM_DEFAULT_MEM_LIMIT;
  vm->call_budget_ms =
      o->call_budget_ms ? o->call_budget_ms : SG_VM_DEFAULT_CALL_BUDGET_MS;
  uint32_t load_budget =
      o->load_budget_ms ? o->load_budget_ms : SG_VM_DEFAULT_LOAD_BUDGET_MS;
  *budget = load_budget;

  lua_State *L = vm->L = lua_newstate(vm_alloc, vm);
  if (!L) {
    vm_free(vm);
    snprintf(err, errlen, "cannot create a Lua state");
    return -ENOMEM;
  }
  lua_atpanic(L, on_panic);
  luaL_openlibs(L);
  wd_add(vm);

  /* Shipped modules come from <data_dir>/lua only. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", o->data_dir,
                  o->data_dir);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  lua_getglobal(L, "require");
  lua_pushstring(L, "cjson");
  if (call_bounded(vm, 1, 1, load_budget, err, errlen))
    goto fail;
  lua_getfield(L, -1, "encode");
  lua_setfield(L, LUA_REGISTRYINDEX, "sg.cjson_encode");
  lua_pop(L, 1);

  lua_getglobal(L, "require");
  lua_pushstring(L, "sandgate.host");
  if (call_bounded(vm, 1, 1, load_budget, err, errlen))
    goto fail;
  int host = lua_gettop(L);
  lua_getfield(L, host, "init");
  lua_newtable(L);
  lua_pushcfunction(L, l_log);
  lua_setfield(L, -2, "log");
  lua_pushcfunction(L, l_budget_exceeded);
  lua_setfield(L, -2, "budget_exceeded");
  lua_pushcfunction(L, l_sha256);
  lua_setfield(L, -2, "sha256");
  lua_pushinteger(L, (lua_Integer)load_budget);
  lua_setfield(L, -2, "load_budget_ms");
  lua_pushinteger(L, (lua_Integer)(vm->mem_limit >> 20));
  lua_setfield(L, -2, "mem_limit_mib");
  if (call_bounded(vm, 1, 0, load_budget, err, errlen))
    goto fail;
  *out = vm;
  return 0;

fail:
  vm_free(vm);
  return -EINVAL;
}

/* The script's source: o->script_src, or the file read into *owned (which
 * the caller frees). Uploaded or read, a script has the same size limit. */
static int script_source(const sg_vm_opts_t *o, const char **src, size_t *len,
                         char **owned, char *err, size_t errlen) {
  *owned = NULL;
  *src = o->script_src;
  *len = o->script_len;
  if (!*src) {
    int rc = sg_file_read(o->script_path, owned, len, err, errlen);
    if (rc)
      return rc;
    *src = *owned;
  }
  if (*len > SCRIPT_MAX_BYTES) {
    free(*owned);
    *owned = NULL;
    snprintf(err, errlen, "script %s is larger than %u bytes",
             o->script_path ? o->script_path : "(uploaded)", SCRIPT_MAX_BYTES);
    return -EFBIG;
  }
  return 0;
}

/* A script being loaded: its source and the chunk name its errors show
 * ("@" and the script's path). */
typedef struct {
  const char *src;
  size_t len;
  char *owned; /* the source, when read from the file */
  char name[1024];
  uint32_t load_budget;
} script_t;

/* The script's source and a new VM with sandgate.host on top of its stack:
 * the start of every load. On failure there is nothing to free. */
static int vm_open_script(const sg_vm_opts_t *o, sg_vm_t **vm, script_t *s,
                          char *err, size_t errlen) {
  int rc = script_source(o, &s->src, &s->len, &s->owned, err, errlen);
  if (rc)
    return rc;
  rc = vm_open(o, vm, &s->load_budget, err, errlen);
  if (rc) {
    free(s->owned);
    s->owned = NULL;
    return rc;
  }
  snprintf(s->name, sizeof(s->name), "@%s",
           o->script_path ? o->script_path : "(uploaded script)");
  return 0;
}

/* The end of a load that succeeded: the entry function (on top) stays at
 * stack index 1 for the VM's life, so a call pushes no registry lookup.
 * Loading leaves garbage behind (the decoded document, temporaries):
 * collect it now, and keep the GC pause low so that the few short strings
 * each call leaves behind never let the heap double before a cycle. */
static void vm_loaded(sg_vm_t *vm) {
  lua_State *L = vm->L;
  lua_replace(L, 1);
  lua_settop(L, 1);
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_gc(L, LUA_GCCOLLECT, 0);
  lua_gc(L, LUA_GCSETPAUSE, 120);
}

int sg_vm_new_egress(const sg_vm_opts_t *o, sg_vm_t **out, char *err,
                     size_t errlen) {
  sg_vm_t *vm;
  script_t sc;
  int rc = vm_open_script(o, &vm, &sc, err, errlen);
  if (rc)
    return rc;
  lua_State *L = vm->L;
  int host = lua_gettop(L);
  rc = -EINVAL;

  /* host.egress(src, name, doc, always, want_statics) -> entry, statics */
  lua_getfield(L, host, "egress");
  lua_pushlstring(L, sc.src, sc.len);
  lua_pushstring(L, sc.name);
  if (o->policy_json)
    lua_pushlstring(L, o->policy_json, o->policy_len);
  else
    lua_pushnil(L);
  static const char *const keys[3] = {"deny", "allow", "log_skip"};
  lua_createtable(L, 0, 6);
  for (int i = 0; i < 3; i++) {
    if (!o->always_text[i])
      continue;
    lua_pushstring(L, o->always_text[i]);
    lua_setfield(L, -2, keys[i]);
    /* Without a path the lists are named deny.always, ... */
    if (!o->always_name[i])
      continue;
    lua_pushstring(L, o->always_name[i]);
    lua_pushfstring(L, "%s_name", keys[i]);
    lua_insert(L, -2);
    lua_settable(L, -3);
  }
  lua_pushboolean(L, o->want_statics);
  if (call_bounded(vm, 5, 2, sc.load_budget, err, errlen))
    goto fail;
  if (o->want_statics) {
    vm->has_statics = 1;
    sg_nft_static_init(&vm->statics);
    if ((rc = read_statics(L, lua_gettop(L), &vm->statics, sc.name + 1, err,
                           errlen)))
      goto fail;
    rc = -EINVAL;
  }
  lua_pop(L, 1);
  vm_loaded(vm);
  free(sc.owned);
  *out = vm;
  return 0;

fail:
  free(sc.owned);
  vm_free(vm);
  return rc;
}

int sg_vm_script_kind(const sg_vm_opts_t *o, sg_vm_kind_t *kind, char *err,
                      size_t errlen) {
  sg_vm_t *vm;
  script_t sc;
  int rc = vm_open_script(o, &vm, &sc, err, errlen);
  if (rc)
    return rc;
  lua_State *L = vm->L;
  /* host.kind(src, name) -> "egress" | "ingress" | nil, why */
  lua_getfield(L, -1, "kind");
  lua_pushlstring(L, sc.src, sc.len);
  lua_pushstring(L, sc.name);
  rc = call_bounded(vm, 2, 2, sc.load_budget, err, errlen);
  free(sc.owned);
  if (!rc) {
    const char *k = lua_tostring(L, -2);
    if (k && strcmp(k, "egress") == 0) {
      *kind = SG_VM_KIND_EGRESS;
    } else if (k && strcmp(k, "ingress") == 0) {
      *kind = SG_VM_KIND_INGRESS;
    } else {
      const char *why = lua_tostring(L, -1);
      snprintf(err, errlen, "%s", why ? why : "unknown script kind");
      rc = -EINVAL;
    }
  }
  vm_free(vm);
  return rc;
}

sg_vm_t *sg_vm_ref(sg_vm_t *vm) {
  if (vm)
    vm->refs++;
  return vm;
}

void sg_vm_unref(sg_vm_t *vm) {
  if (vm && --vm->refs == 0)
    vm_free(vm);
}

size_t sg_vm_mem_used(const sg_vm_t *vm) {
  return vm->mem_used;
}

/* Fills the verdict's rule reference, source, index and target from the
 * entry's results starting at stack index r. A rule named by index and
 * target is formatted here, only when it is asked for (logging, explain). */
static void describe_rule(lua_State *L, int r, sg_vm_verdict_t *v) {
  size_t rlen = 0;
  const char *rule =
      lua_type(L, r + 1) == LUA_TSTRING ? lua_tolstring(L, r + 1, &rlen) : NULL;
  int has_index = lua_type(L, r + 3) == LUA_TNUMBER;
  size_t tlen = 0;
  const char *target =
      lua_type(L, r + 4) == LUA_TSTRING ? lua_tolstring(L, r + 4, &tlen) : NULL;
  if (rule) {
    if (rlen >= sizeof(v->rule))
      rlen = sizeof(v->rule) - 1;
    memcpy(v->rule, rule, rlen);
    v->rule[rlen] = 0;
  } else if (has_index && target) {
    snprintf(v->rule, sizeof(v->rule), "egress[%d] %s %s",
             (int)lua_tointeger(L, r + 3), v->allow ? "allow" : "deny", target);
  }
  if (has_index && target) {
    v->index = (int)lua_tointeger(L, r + 3);
    if (tlen >= sizeof(v->target))
      tlen = sizeof(v->target) - 1;
    memcpy(v->target, target, tlen);
    v->target[tlen] = 0;
  }
  const char *src = lua_tostring(L, r + 6);
  if (src && strcmp(src, "deny.always") == 0)
    v->source = SG_VM_SOURCE_DENY_ALWAYS;
  else if (src && strcmp(src, "allow.always") == 0)
    v->source = SG_VM_SOURCE_ALLOW_ALWAYS;
}

sg_vm_status_t sg_vm_decide(sg_vm_t *vm, const sg_vm_query_t *q,
                            sg_vm_verdict_t *v) {
  lua_State *L = vm->L;
  v->allow = 0;
  v->quiet = 0;
  v->rcode = 3;
  v->rule[0] = 0;
  v->error[0] = 0;

  lua_pushvalue(L, 1);
  lua_pushlstring(L, q->name, q->name_len);
  lua_pushstring(L, q->qtype);
  lua_pushstring(L, q->client);
  lua_pushstring(L, q->transport);
  int rc = vm_call(vm, 4, 7, vm->call_budget_ms);

  v->source = SG_VM_SOURCE_POLICY;
  v->index = -1;
  v->target[0] = 0;
  sg_vm_status_t st = SG_VM_OK;
  if (rc != 0) {
    const char *msg = lua_tostring(L, -1);
    if (rc == LUA_ERRMEM) {
      st = SG_VM_NOMEM;
      /* Whatever the call built is garbage now: free it before the next
       * query, or every later call would start at the cap. */
      lua_gc(L, LUA_GCCOLLECT, 0);
      snprintf(v->error, sizeof(v->error),
               "script exceeded its memory limit of %zu MiB",
               vm->mem_limit >> 20);
    } else if (vm->timed_out) {
      st = SG_VM_TIMEOUT;
      snprintf(v->error, sizeof(v->error),
               "script exceeded its time budget of %u ms", vm->call_budget_ms);
    } else {
      st = SG_VM_ERR;
      snprintf(v->error, sizeof(v->error), "%s", msg ? msg : "unknown error");
    }
  } else {
    /* Results: allow, rule, rcode, index, target, quiet, source (see
     * egress_entry in lua/sandgate/host.lua). */
    int r = lua_gettop(L) - 6;
    v->allow = lua_tointeger(L, r) == 1;
    v->quiet = lua_toboolean(L, r + 5);
    if (!v->allow && lua_isnumber(L, r + 2))
      v->rcode = (int)lua_tointeger(L, r + 2);
    if (q->want_rule)
      describe_rule(L, r, v);
  }
  lua_settop(L, 1);
  return st;
}

int sg_vm_new_ingress(const sg_vm_opts_t *o, const char *cfg_json,
                      sg_vm_t **out, char *err, size_t errlen) {
  sg_vm_t *vm;
  script_t sc;
  int rc = vm_open_script(o, &vm, &sc, err, errlen);
  if (rc)
    return rc;
  lua_State *L = vm->L;
  /* require("sandgate.ingress.host").ingress(src, name, cfg) -> entry */
  lua_settop(L, 0);
  lua_getglobal(L, "require");
  lua_pushstring(L, "sandgate.ingress.host");
  rc = call_bounded(vm, 1, 1, sc.load_budget, err, errlen);
  if (!rc) {
    lua_getfield(L, -1, "ingress");
    lua_pushlstring(L, sc.src, sc.len);
    lua_pushstring(L, sc.name);
    lua_pushstring(L, cfg_json ? cfg_json : "{}");
    rc = call_bounded(vm, 3, 1, sc.load_budget, err, errlen);
  }
  free(sc.owned);
  if (rc || !lua_isfunction(L, -1)) {
    if (!rc)
      snprintf(err, errlen, "sandgate.ingress.host returned no entry");
    vm_free(vm);
    return -EINVAL;
  }
  vm_loaded(vm);
  *out = vm;
  return 0;
}

/* Copies a Lua string result into a fixed buffer; false when too long. */
static bool copy_str(lua_State *L, int idx, char *dst, size_t cap) {
  size_t n = 0;
  const char *v = lua_tolstring(L, idx, &n);
  if (!v || n >= cap)
    return false;
  memcpy(dst, v, n);
  dst[n] = 0;
  return true;
}

static void route_fail(sg_proxy_route_t *out, const char *fmt, const char *a) {
  out->status = 500;
  snprintf(out->message, sizeof(out->message), fmt, a);
}

/* The request's headers as the routing script sees them: a table from
 * lower-case name to value, repeats joined with ", " in order. Built here
 * rather than in Lua (a Lua loop with string.lower made a fifth of the
 * routing call); request_args in lua/sandgate/ingress/host.lua does the same
 * for the testing module. */
static void push_headers(lua_State *L, const sg_proxy_request_t *req) {
  lua_createtable(L, 0, (int)req->nheaders);
  char small[128];
  for (size_t i = 0; i < req->nheaders; i++) {
    const sg_proxy_header_t *h = &req->headers[i];
    char *name = h->name_len <= sizeof(small) ? small : malloc(h->name_len);
    if (!name)
      continue; /* out of memory: the header is left out */
    for (size_t j = 0; j < h->name_len; j++) {
      char c = h->name[j];
      name[j] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    lua_pushlstring(L, name, h->name_len);
    if (name != small)
      free(name);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, h->value, h->value_len);
    } else {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h->value, h->value_len);
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
}

void sg_vm_route(sg_vm_t *vm, const sg_proxy_request_t *req,
                 sg_proxy_route_t *out) {
  lua_State *L = vm->L;
  out->sandbox[0] = 0;
  lua_pushvalue(L, 1);
  lua_pushstring(L, req->method);
  lua_pushlstring(L, req->target, req->target_len);
  lua_pushstring(L, req->client_ip);
  push_headers(L, req);
  /* path and query: the target split at its first '?' (no query: nil) */
  const char *q = memchr(req->target, '?', req->target_len);
  if (q) {
    lua_pushlstring(L, req->target, (size_t)(q - req->target));
    lua_pushlstring(L, q + 1, req->target_len - (size_t)(q - req->target) - 1);
  } else {
    lua_pushvalue(L, -3);
    lua_pushnil(L);
  }
  int rc = vm_call(vm, 6, 8, vm->call_budget_ms);
  if (rc != 0) {
    if (rc == LUA_ERRMEM) {
      lua_gc(L, LUA_GCCOLLECT, 0);
      route_fail(out, "%s", "routing script exceeded its memory limit");
    } else if (vm->timed_out) {
      route_fail(out, "%s", "routing script exceeded its time budget");
    } else {
      const char *msg = lua_tostring(L, -1);
      route_fail(out, "routing script failed: %s", msg ? msg : "?");
    }
    lua_settop(L, 1);
    return;
  }
  /* Results from r: status, host|message, port, path, set, remove,
   * keep_host, sandbox (see lua/sandgate/ingress/host.lua). */
  int r = lua_gettop(L) - 7;
  int status = (int)lua_tointeger(L, r);
  if (status != 0) {
    out->status = status >= 400 && status <= 599 ? status : 500;
    if (!copy_str(L, r + 1, out->message, sizeof(out->message)))
      snprintf(out->message, sizeof(out->message), "request refused");
    lua_settop(L, 1);
    return;
  }
  int port = (int)lua_tointeger(L, r + 2);
  if (!copy_str(L, r + 1, out->host, sizeof(out->host)) ||
      !copy_str(L, r + 3, out->path, sizeof(out->path)) || port < 1 ||
      port > 65535) {
    route_fail(out, "%s",
               "routing script returned a route without a valid host, port "
               "and path");
    lua_settop(L, 1);
    return;
  }
  out->port = (uint16_t)port;
  out->keep_host = lua_toboolean(L, r + 6);
  out->nset = out->nremove = 0;
  if (lua_istable(L, r + 4)) {
    size_t n = lua_objlen(L, r + 4);
    for (size_t i = 1; i + 1 <= n && out->nset < SG_PROXY_MAX_SET_HEADERS;
         i += 2) {
      lua_rawgeti(L, r + 4, (int)i);
      lua_rawgeti(L, r + 4, (int)i + 1);
      if (copy_str(L, -2, out->set_name[out->nset], 64) &&
          copy_str(L, -1, out->set_value[out->nset], 512))
        out->nset++;
      lua_pop(L, 2);
    }
  }
  if (lua_istable(L, r + 5)) {
    size_t n = lua_objlen(L, r + 5);
    for (size_t i = 1; i <= n && out->nremove < SG_PROXY_MAX_REMOVE_HEADERS;
         i++) {
      lua_rawgeti(L, r + 5, (int)i);
      if (copy_str(L, -1, out->remove[out->nremove], 64))
        out->nremove++;
      lua_pop(L, 1);
    }
  }
  if (lua_type(L, r + 7) == LUA_TSTRING)
    copy_str(L, r + 7, out->sandbox, sizeof(out->sandbox));
  out->status = 0;
  lua_settop(L, 1);
}
