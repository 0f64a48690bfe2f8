/* The command line `sandgate check` and `sandgate test` share, and the one
 * way they build a VM (the server's loader, with the server's inputs). */
#include "tools/tools.h"
#include "util/env.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "util/file.h"
#include "util/log.h"

enum {
  O_KIND = 256,
  O_POLICY,
  O_RULES_DIR,
  O_ROUTES,
  O_SCRIPT_CONFIG,
  O_MODE,
  O_TEMPLATE,
  O_KEYS,
  O_MEMORY,
  O_TIMEOUT,
  O_LOG,
  O_HELP,
};

static const struct option long_opts[] = {
    {"kind", required_argument, NULL, O_KIND},
    {"policy", required_argument, NULL, O_POLICY},
    {"rules-dir", required_argument, NULL, O_RULES_DIR},
    {"routes", required_argument, NULL, O_ROUTES},
    {"script-config", required_argument, NULL, O_SCRIPT_CONFIG},
    {"mode", required_argument, NULL, O_MODE},
    {"dns-template", required_argument, NULL, O_TEMPLATE},
    {"secure-access-keys", required_argument, NULL, O_KEYS},
    {"script-memory", required_argument, NULL, O_MEMORY},
    {"script-timeout", required_argument, NULL, O_TIMEOUT},
    {"log-level", required_argument, NULL, O_LOG},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

static int parse_num(const char *name, const char *s, unsigned long min,
                     unsigned long max, unsigned long *out, char *err,
                     size_t errlen) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
    snprintf(err, errlen, "%s: \"%s\" is not a number from %lu to %lu", name, s,
             min, max);
    return 2;
  }
  *out = v;
  return 0;
}

/* The always-lists of dir, as the egress server reads them: a file that
 * does not exist is no list. */
static int read_always(sg_tool_t *t, char *err, size_t errlen) {
  static const char *const names[3] = {"deny.always", "allow.always",
                                       "log_skip.always"};
  for (int i = 0; i < 3; i++) {
    snprintf(t->always_path[i], sizeof(t->always_path[i]), "%s/%s",
             t->rules_dir, names[i]);
    struct stat st;
    if (stat(t->always_path[i], &st) != 0 && errno == ENOENT)
      continue;
    if (sg_file_read(t->always_path[i], &t->always_text[i], NULL, err, errlen))
      return 2;
  }
  return 0;
}

int sg_tool_init(sg_tool_t *t, int argc, char **argv, int nargs,
                 const char *usage, char *err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  const char *home = sg_env("SANDGATE_HOME");
  t->data_dir = home ? home : SG_DATA_DIR;
  const char *kind = NULL, *log_level = NULL;
  /* The egress server's variables for the limits; flags win. */
  const char *memory = sg_env("SANDGATE_SCRIPT_MEMORY_MB");
  const char *timeout = sg_env("SANDGATE_SCRIPT_TIMEOUT_MS");
  optind = 1;
  opterr = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
    switch (opt) {
    case O_KIND: kind = optarg; break;
    case O_POLICY: t->policy_file = optarg; break;
    case O_RULES_DIR: t->rules_dir = optarg; break;
    case O_ROUTES: t->ingress.routes = optarg; break;
    case O_SCRIPT_CONFIG: t->ingress.script_config = optarg; break;
    case O_MODE: t->ingress.mode = optarg; break;
    case O_TEMPLATE: t->ingress.dns_template = optarg; break;
    case O_KEYS: t->ingress.keys = optarg; break;
    case O_MEMORY: memory = optarg; break;
    case O_TIMEOUT: timeout = optarg; break;
    case O_LOG: log_level = optarg; break;
    case 'h':
    case O_HELP: fputs(usage, stdout); return 1;
    default:
      snprintf(err, errlen, "unknown flag or missing value near \"%s\"",
               argv[optind - 1]);
      return 2;
    }
  }
  if (argc - optind != nargs) {
    snprintf(err, errlen, "expected %d argument%s, got %d", nargs,
             nargs == 1 ? "" : "s", argc - optind);
    return 2;
  }
  for (int i = 0; i < nargs; i++)
    t->args[i] = argv[optind + i];
  t->nargs = nargs;

  /* Scripts' own log lines (print, sandgate.log) would drown the report:
   * warnings and errors only, unless asked. */
  int level = SG_LOG_WARN;
  if (log_level && (level = sg_log_parse_level(log_level)) < 0) {
    snprintf(err, errlen,
             "--log-level: \"%s\" is not debug, info, warn or "
             "error",
             log_level);
    return 2;
  }
  sg_log_set_level((sg_log_level_t)level);
  unsigned long v;
  if (memory) {
    if (parse_num("--script-memory", memory, 1, 4096, &v, err, errlen))
      return 2;
    t->mem_limit = (size_t)v << 20;
  }
  if (timeout) {
    if (parse_num("--script-timeout", timeout, 1, 60000, &v, err, errlen))
      return 2;
    t->call_budget_ms = (uint32_t)v;
  }
  if (t->ingress.mode && strcasecmp(t->ingress.mode, "header") != 0 &&
      strcasecmp(t->ingress.mode, "uri") != 0) {
    snprintf(err, errlen, "--mode: \"%s\" is not header or uri",
             t->ingress.mode);
    return 2;
  }
  if (kind) {
    if (strcmp(kind, "egress") == 0) {
      t->kind = SG_VM_KIND_EGRESS;
    } else if (strcmp(kind, "ingress") == 0) {
      t->kind = SG_VM_KIND_INGRESS;
    } else {
      snprintf(err, errlen, "--kind: \"%s\" is not egress or ingress", kind);
      return 2;
    }
  }
  if (t->policy_file &&
      sg_file_read(t->policy_file, &t->policy_json, NULL, err, errlen))
    return 2;
  if (t->rules_dir && read_always(t, err, errlen))
    return 2;
  if (!t->kind) {
    sg_vm_opts_t o = {
        .data_dir = t->data_dir,
        .script_path = t->args[0],
        .mem_limit = t->mem_limit,
        .call_budget_ms = t->call_budget_ms,
    };
    /* A script that cannot be read or run is reported as its load would
     * be. */
    if (sg_vm_script_kind(&o, &t->kind, err, errlen))
      return -EINVAL;
  }
  return 0;
}

void sg_tool_free(sg_tool_t *t) {
  free(t->policy_json);
  for (int i = 0; i < 3; i++)
    free(t->always_text[i]);
}

int sg_tool_build(const sg_tool_t *t, const char *policy_json,
                  char *const always[3], const char *cfg_json, sg_vm_t **out,
                  char *err, size_t errlen) {
  sg_vm_opts_t o = {
      .data_dir = t->data_dir,
      .script_path = t->args[0],
      .mem_limit = t->mem_limit,
      .call_budget_ms = t->call_budget_ms,
  };
  if (t->kind == SG_VM_KIND_INGRESS) {
    char *own = NULL;
    if (!cfg_json) {
      own = sg_ingress_config_json(&t->ingress, err, errlen);
      if (!own)
        return -EINVAL;
      cfg_json = own;
    }
    int rc = sg_vm_new_ingress(&o, cfg_json, out, err, errlen);
    free(own);
    return rc;
  }
  o.policy_json = policy_json ? policy_json : t->policy_json;
  o.policy_len = o.policy_json ? strlen(o.policy_json) : 0;
  for (int i = 0; i < 3; i++) {
    o.always_text[i] = always ? always[i] : t->always_text[i];
    o.always_name[i] = always ? NULL : t->always_path[i];
  }
  /* The dns+nft server also asks static_sets(): check always does, so a
   * script that only breaks there is caught before it is deployed. */
  o.want_statics = 1;
  return sg_vm_new_egress(&o, out, err, errlen);
}

void sg_tool_print_errors(const sg_tool_t *t, const char *lead,
                          const char *errors) {
  const char *p = errors;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t n = nl ? (size_t)(nl - p) : strlen(p);
    fputs(lead, stdout);
    if (t->policy_file && n > 16 && strncmp(p, "invalid policy: ", 16) == 0)
      printf("%s: ", t->policy_file);
    else if (t->ingress.routes && n > 16 &&
             strncmp(p, "invalid routes: ", 16) == 0)
      printf("%s: ", t->ingress.routes);
    printf("%.*s\n", (int)n, p);
    p += n;
    if (*p == '\n')
      p++;
  }
}
