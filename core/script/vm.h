/* The Lua policy host: one LuaJIT state per loaded script.
 *
 * A VM is built completely off to the side (state, sandbox, script, policy
 * document, self-test) and only then handed to the caller, who swaps one
 * pointer: a broken script or document never replaces a working VM. Every
 * call into Lua runs under a memory cap (a custom allocator) and a time
 * budget (a count hook that checks a deadline). User scripts are kept
 * interpreted (jit.off on their chunk) so the hook always sees them; the
 * shipped modules they call stay JIT-compiled. */
#ifndef SG_SCRIPT_VM_H
#define SG_SCRIPT_VM_H

#include <stddef.h>
#include <stdint.h>

#include "nft/filter.h"
#include "proxy/proxy.h"

typedef struct sg_vm sg_vm_t;

typedef struct {
  const char *data_dir;    /* holds lua/ (the shipped modules) */
  const char *script_path; /* names the chunk in errors; read if src NULL */
  const char *script_src;  /* optional: the source itself (API upload) */
  size_t script_len;
  const char *policy_json; /* the policy document; NULL or "" = deny-all */
  size_t policy_len;
  /* The operator's always-lists (NULL = no such file) and their paths for
   * error messages: deny.always, allow.always, log_skip.always. */
  const char *always_text[3];
  const char *always_name[3];
  size_t mem_limit;        /* bytes the state may hold; 0 = default */
  uint32_t call_budget_ms; /* per hook call; 0 = default */
  uint32_t load_budget_ms; /* script chunk + load() + selftest; 0 = default */
  int want_statics;        /* dns+nft: build the filter's static sets */
} sg_vm_opts_t;

#define SG_VM_DEFAULT_MEM_LIMIT (64u << 20)
#define SG_VM_DEFAULT_CALL_BUDGET_MS 100
#define SG_VM_DEFAULT_LOAD_BUDGET_MS 5000

typedef enum {
  SG_VM_OK = 0,
  SG_VM_ERR,     /* the script raised an error or returned nonsense */
  SG_VM_TIMEOUT, /* the call ran past its time budget */
  SG_VM_NOMEM,   /* the state hit its memory cap */
} sg_vm_status_t;

/* Builds an egress VM: the script's main chunk, load(doc), selftest() and,
 * with want_statics, static_sets(). On failure returns a negative
 * errno-style code and the errors in err, one per line, each naming the
 * script file, the line when known and the stage ("policy.lua:12: in
 * load(): ..."; see lua/sandgate/host.lua); *out is left untouched. This is
 * the one loader: the server's start, reloads and API writes, and `sandgate
 * check` and `sandgate test` all build VMs through it. */
int sg_vm_new_egress(const sg_vm_opts_t *opts, sg_vm_t **out, char *err,
                     size_t errlen);

typedef enum {
  SG_VM_KIND_EGRESS = 1, /* the script has a decide hook */
  SG_VM_KIND_INGRESS,    /* the script has a route hook */
} sg_vm_kind_t;

/* Tells which plane a script is written for by its hooks, running its main
 * chunk in a throwaway VM with the same sandbox and limits. Returns 0, or
 * -EINVAL with the reason in err: the script's own error (as a load gives
 * it), or that it has both hooks or neither. */
int sg_vm_script_kind(const sg_vm_opts_t *opts, sg_vm_kind_t *kind, char *err,
                      size_t errlen);

/* VMs are reference counted so that whoever started work on one finishes on
 * it after a reload swapped in another. sg_vm_unref(NULL) is a no-op. */
sg_vm_t *sg_vm_ref(sg_vm_t *vm);
void sg_vm_unref(sg_vm_t *vm);

typedef struct {
  const char *name; /* presentation form, lower-case, no trailing dot */
  size_t name_len;
  const char *qtype;     /* "A", "AAAA", "TYPE65" */
  const char *client;    /* client IP */
  const char *transport; /* "udp" or "tcp" */
  int want_rule;         /* fill verdict.rule (only needed for logging) */
} sg_vm_query_t;

/* Where a decision came from. */
typedef enum {
  SG_VM_SOURCE_POLICY = 0, /* the script (the user's policy) */
  SG_VM_SOURCE_ALLOW_ALWAYS,
  SG_VM_SOURCE_DENY_ALWAYS,
} sg_vm_source_t;

typedef struct {
  int allow;       /* 1 allow, 0 deny (also on every error: fail closed) */
  int quiet;       /* an allowed query the log should skip (log_skip) */
  int rcode;       /* for a deny: the answer's rcode (NXDOMAIN unless the
                      script asked for NOERROR/NODATA, REFUSED or SERVFAIL) */
  char rule[320];  /* the rule reference the log shows ("egress[0] allow
                      *.pypi.org", "default", "deny.always:3 x", a script's
                      own), "" if none or not asked for (want_rule) */
  /* With want_rule: where the decision came from and, when a rule of a
   * list decided (the policy's rules or an always-list), its 0-based index
   * in that list (-1 otherwise) and its target. */
  sg_vm_source_t source;
  int index;
  char target[256];
  char error[512]; /* set when the status is not SG_VM_OK */
} sg_vm_verdict_t;

/* Asks the script's decide hook. Never fails open: on any error the verdict
 * is deny and the status says why. */
sg_vm_status_t sg_vm_decide(sg_vm_t *vm, const sg_vm_query_t *q,
                            sg_vm_verdict_t *v);

/* The filter's static sets the VM was built with (want_statics), from the
 * script's static_sets() hook and the always-lists, normalized: deny is the
 * policy's deny addresses minus allow.always, plus deny.always; allow is the
 * policy's allow addresses plus allow.always. NULL without want_statics. */
const sg_nft_static_t *sg_vm_statics(const sg_vm_t *vm);

/* Builds an ingress VM: the routing script loaded by sandgate.ingress.host
 * with cfg_json (mode, routes, DNS template, keys). Errors as for egress. */
int sg_vm_new_ingress(const sg_vm_opts_t *opts, const char *cfg_json,
                      sg_vm_t **out, char *err, size_t errlen);

/* Asks the routing script where a request goes. Never fails open: a script
 * error or a malformed result is a 500 with the reason in out->message. */
void sg_vm_route(sg_vm_t *vm, const sg_proxy_request_t *req,
                 sg_proxy_route_t *out);

/* Bytes currently held by the state (for /metrics and the RSS budget). */
size_t sg_vm_mem_used(const sg_vm_t *vm);

#endif
