#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "egress/egress.h"
#include "util/env.h"
#include "util/file.h"
#include "util/log.h"
#include "util/sockaddr.h"

#define DEFAULT_DNS_PORT 15353
#define DEFAULT_RESOLV_CONF "/etc/resolv.conf"

/* clang-format off */
static const char usage[] =
    "usage: sandgate egress [flags]\n"
    "\n"
    "Runs the egress plane of a sandbox: a policy DNS proxy on 127.0.0.1:15353\n"
    "and [::1]:15353, with port 53 redirected to it by nftables, and the\n"
    "OpenSandbox policy API on :18080.\n"
    "\n"
    "flags (each wins over its environment variable):\n"
    "  --upstream LIST        OPENSANDBOX_EGRESS_DNS_UPSTREAM: IP, IP:port, [v6]:port, comma-separated\n"
    "  --upstream-timeout S   OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT: seconds per exchange (5, max 120)\n"
    "  --policy-file PATH     OPENSANDBOX_EGRESS_POLICY_FILE: policy document read at start, written on change\n"
    "  --rules JSON|@PATH     OPENSANDBOX_EGRESS_RULES: initial policy document\n"
    "  --script PATH          SANDGATE_EGRESS_SCRIPT: Lua policy script (policies/egress/default.lua)\n"
    "  --listen ADDR:PORT     SANDGATE_EGRESS_LISTEN (comma list): DNS listeners, repeatable\n"
    "  --no-intercept         SANDGATE_EGRESS_NO_INTERCEPT=1: do not touch the kernel ruleset\n"
    "  --on-exit keep|remove  SANDGATE_EGRESS_ON_EXIT: the nft table on a clean stop (keep: fail closed)\n"
    "  --http-addr ADDR       OPENSANDBOX_EGRESS_HTTP_ADDR: policy API listener (:18080; off = none)\n"
    "  --token TOKEN          OPENSANDBOX_EGRESS_TOKEN (or _TOKEN_FILE): required API header value\n"
    "  --max-rules N          OPENSANDBOX_EGRESS_MAX_RULES: rules a policy may have (4096; 0 = no limit)\n"
    "  --mode MODE            OPENSANDBOX_EGRESS_MODE: dns or dns+nft (kernel filter fed by DNS answers)\n"
    "  --block reject|drop    SANDGATE_EGRESS_BLOCK: how dns+nft blocks (reject: TCP reset / ICMP)\n"
    "  --block-doh-443        OPENSANDBOX_EGRESS_BLOCK_DOH_443=true: block tcp/443 (to the blocklist if set)\n"
    "  --doh-blocklist LIST   OPENSANDBOX_EGRESS_DOH_BLOCKLIST: IPs/CIDRs whose tcp/443 is blocked\n"
    "  --nameserver-exempt L  OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT: upstream IPs queried without the mark\n"
    "  --exempt-uid UID       SANDGATE_EGRESS_EXEMPT_UID: whose sockets the exemption covers (own euid)\n"
    "  --dyn-grace S          SANDGATE_EGRESS_DYN_GRACE: learned IP timeout = clamp(TTL+grace, min, max) (60)\n"
    "  --dyn-min S            SANDGATE_EGRESS_DYN_MIN: (60)\n"
    "  --dyn-max S            SANDGATE_EGRESS_DYN_MAX: (360)\n"
    "  --nft-timeout MS       SANDGATE_EGRESS_NFT_TIMEOUT_MS: wait for the kernel's ACK, then SERVFAIL (100)\n"
    "  --cleanup              SANDGATE_EGRESS_ON_EXIT=remove: remove the nft table on stop\n"
    "  --rules-dir DIR        SANDGATE_RULES_DIR: deny.always, allow.always, log_skip.always (/var/egress/rules)\n"
    "  --deny-webhook URL     OPENSANDBOX_EGRESS_DENY_WEBHOOK: http:// URL that gets each denied name\n"
    "  --sandbox-id ID        OPENSANDBOX_EGRESS_SANDBOX_ID: sandboxId in webhook events\n"
    "  --no-query-log         SANDGATE_LOG_QUERIES=0: no per-query log lines\n"
    "  --log-level LEVEL      SANDGATE_LOG_LEVEL: debug, info, warn, error (info)\n"
    "  --tcp-idle-timeout S   SANDGATE_DNS_TCP_IDLE_TIMEOUT: idle TCP clients closed after S seconds (10)\n"
    "  --tcp-max-clients N    SANDGATE_DNS_TCP_MAX_CLIENTS: concurrent TCP clients (256)\n"
    "  --script-memory MB     SANDGATE_SCRIPT_MEMORY_MB: memory cap of a policy VM (64)\n"
    "  --script-timeout MS    SANDGATE_SCRIPT_TIMEOUT_MS: time budget of one decide call (100)\n";
/* clang-format on */

/* Reads an unsigned number in [min, max]; the name goes into the message. */
static int parse_uint(const char *name, const char *s, unsigned long min,
                      unsigned long max, unsigned long *out, char *err,
                      size_t errlen) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
    snprintf(err, errlen, "%s: \"%s\" is not a number from %lu to %lu", name, s,
             min, max);
    return -EINVAL;
  }
  *out = v;
  return 0;
}

/* Splits a comma list of addresses into out[]; `what` names the source. */
static int parse_addr_list(const char *what, const char *list,
                           uint16_t default_port, struct sockaddr_storage *out,
                           int max, int *n, char *err, size_t errlen) {
  char *copy = strdup(list), *save = NULL;
  if (!copy)
    return -ENOMEM;
  int rc = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ')
      tok++;
    size_t len = strlen(tok);
    while (len && tok[len - 1] == ' ')
      tok[--len] = 0;
    if (!len)
      continue;
    if (*n >= max) {
      snprintf(err, errlen, "%s: more than %d addresses", what, max);
      rc = -EINVAL;
      break;
    }
    char perr[256];
    if (sg_sockaddr_parse(tok, default_port, &out[*n], perr, sizeof(perr))) {
      snprintf(err, errlen, "%s: %s", what, perr);
      rc = -EINVAL;
      break;
    }
    (*n)++;
  }
  free(copy);
  return rc;
}

enum {
  OPT_UPSTREAM = 256,
  OPT_UPSTREAM_TIMEOUT,
  OPT_POLICY_FILE,
  OPT_RULES,
  OPT_SCRIPT,
  OPT_LISTEN,
  OPT_NO_INTERCEPT,
  OPT_ON_EXIT,
  OPT_NO_QUERY_LOG,
  OPT_LOG_LEVEL,
  OPT_TCP_IDLE,
  OPT_TCP_MAX,
  OPT_SCRIPT_MEM,
  OPT_SCRIPT_TIMEOUT,
  OPT_HTTP_ADDR,
  OPT_TOKEN,
  OPT_MAX_RULES,
  OPT_MODE,
  OPT_RULES_DIR,
  OPT_DENY_WEBHOOK,
  OPT_SANDBOX_ID,
  OPT_BLOCK,
  OPT_BLOCK_DOH,
  OPT_DOH_LIST,
  OPT_EXEMPT,
  OPT_EXEMPT_UID,
  OPT_DYN_GRACE,
  OPT_DYN_MIN,
  OPT_DYN_MAX,
  OPT_NFT_TIMEOUT,
  OPT_CLEANUP,
  OPT_HELP,
};

static const struct option long_opts[] = {
    {"upstream", required_argument, NULL, OPT_UPSTREAM},
    {"upstream-timeout", required_argument, NULL, OPT_UPSTREAM_TIMEOUT},
    {"policy-file", required_argument, NULL, OPT_POLICY_FILE},
    {"rules", required_argument, NULL, OPT_RULES},
    {"script", required_argument, NULL, OPT_SCRIPT},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"no-intercept", no_argument, NULL, OPT_NO_INTERCEPT},
    {"on-exit", required_argument, NULL, OPT_ON_EXIT},
    {"no-query-log", no_argument, NULL, OPT_NO_QUERY_LOG},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"tcp-idle-timeout", required_argument, NULL, OPT_TCP_IDLE},
    {"tcp-max-clients", required_argument, NULL, OPT_TCP_MAX},
    {"script-memory", required_argument, NULL, OPT_SCRIPT_MEM},
    {"script-timeout", required_argument, NULL, OPT_SCRIPT_TIMEOUT},
    {"http-addr", required_argument, NULL, OPT_HTTP_ADDR},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"max-rules", required_argument, NULL, OPT_MAX_RULES},
    {"mode", required_argument, NULL, OPT_MODE},
    {"rules-dir", required_argument, NULL, OPT_RULES_DIR},
    {"deny-webhook", required_argument, NULL, OPT_DENY_WEBHOOK},
    {"sandbox-id", required_argument, NULL, OPT_SANDBOX_ID},
    {"block", required_argument, NULL, OPT_BLOCK},
    {"block-doh-443", no_argument, NULL, OPT_BLOCK_DOH},
    {"doh-blocklist", required_argument, NULL, OPT_DOH_LIST},
    {"nameserver-exempt", required_argument, NULL, OPT_EXEMPT},
    {"exempt-uid", required_argument, NULL, OPT_EXEMPT_UID},
    {"dyn-grace", required_argument, NULL, OPT_DYN_GRACE},
    {"dyn-min", required_argument, NULL, OPT_DYN_MIN},
    {"dyn-max", required_argument, NULL, OPT_DYN_MAX},
    {"nft-timeout", required_argument, NULL, OPT_NFT_TIMEOUT},
    {"cleanup", no_argument, NULL, OPT_CLEANUP},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* The value of each setting: the flag if given, else the variable. */
typedef struct {
  const char *upstream, *upstream_timeout, *policy_file, *rules, *script;
  const char *listen, *no_intercept, *on_exit, *log_queries, *log_level;
  const char *tcp_idle, *tcp_max, *script_mem, *script_timeout;
  const char *http_addr, *token, *token_file, *max_rules, *mode, *rules_dir;
  const char *deny_webhook, *sandbox_id;
  const char *block, *block_doh, *doh_list, *exempt, *exempt_uid;
  const char *dyn_grace, *dyn_min, *dyn_max, *nft_timeout;
  char listen_flags[1024];
} raw_t;

static int truthy(const char *v) {
  return v && (strcmp(v, "1") == 0 || strcasecmp(v, "true") == 0 ||
               strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0);
}

static int collect(raw_t *r, int argc, char **argv, char *err, size_t errlen) {
  memset(r, 0, sizeof(*r));
  r->upstream = sg_env("OPENSANDBOX_EGRESS_DNS_UPSTREAM");
  r->upstream_timeout = sg_env("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT");
  r->policy_file = sg_env("OPENSANDBOX_EGRESS_POLICY_FILE");
  r->rules = sg_env("OPENSANDBOX_EGRESS_RULES");
  r->script = sg_env("SANDGATE_EGRESS_SCRIPT");
  r->listen = sg_env("SANDGATE_EGRESS_LISTEN");
  r->no_intercept = sg_env("SANDGATE_EGRESS_NO_INTERCEPT");
  r->on_exit = sg_env("SANDGATE_EGRESS_ON_EXIT");
  r->log_queries = sg_env("SANDGATE_LOG_QUERIES");
  r->log_level = sg_env("SANDGATE_LOG_LEVEL");
  r->tcp_idle = sg_env("SANDGATE_DNS_TCP_IDLE_TIMEOUT");
  r->tcp_max = sg_env("SANDGATE_DNS_TCP_MAX_CLIENTS");
  r->script_mem = sg_env("SANDGATE_SCRIPT_MEMORY_MB");
  r->script_timeout = sg_env("SANDGATE_SCRIPT_TIMEOUT_MS");
  r->http_addr = sg_env("OPENSANDBOX_EGRESS_HTTP_ADDR");
  r->token = sg_env("OPENSANDBOX_EGRESS_TOKEN");
  r->token_file = sg_env("OPENSANDBOX_EGRESS_TOKEN_FILE");
  r->max_rules = sg_env("OPENSANDBOX_EGRESS_MAX_RULES");
  r->mode = sg_env("OPENSANDBOX_EGRESS_MODE");
  r->rules_dir = sg_env("SANDGATE_RULES_DIR");
  r->deny_webhook = sg_env("OPENSANDBOX_EGRESS_DENY_WEBHOOK");
  r->sandbox_id = sg_env("OPENSANDBOX_EGRESS_SANDBOX_ID");
  r->block = sg_env("SANDGATE_EGRESS_BLOCK");
  r->block_doh = sg_env("OPENSANDBOX_EGRESS_BLOCK_DOH_443");
  r->doh_list = sg_env("OPENSANDBOX_EGRESS_DOH_BLOCKLIST");
  r->exempt = sg_env("OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT");
  r->exempt_uid = sg_env("SANDGATE_EGRESS_EXEMPT_UID");
  r->dyn_grace = sg_env("SANDGATE_EGRESS_DYN_GRACE");
  r->dyn_min = sg_env("SANDGATE_EGRESS_DYN_MIN");
  r->dyn_max = sg_env("SANDGATE_EGRESS_DYN_MAX");
  r->nft_timeout = sg_env("SANDGATE_EGRESS_NFT_TIMEOUT_MS");

  optind = 1;
  opterr = 0;
  int opt, listen_given = 0;
  while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
    switch (opt) {
    case OPT_UPSTREAM: r->upstream = optarg; break;
    case OPT_UPSTREAM_TIMEOUT: r->upstream_timeout = optarg; break;
    case OPT_POLICY_FILE: r->policy_file = optarg; break;
    case OPT_RULES: r->rules = optarg; break;
    case OPT_SCRIPT: r->script = optarg; break;
    case OPT_LISTEN: {
      /* Repeatable: the flags together replace the variable. */
      size_t used = strlen(r->listen_flags);
      snprintf(r->listen_flags + used, sizeof(r->listen_flags) - used, "%s%s",
               listen_given ? "," : "", optarg);
      listen_given = 1;
      r->listen = r->listen_flags;
      break;
    }
    case OPT_NO_INTERCEPT: r->no_intercept = "1"; break;
    case OPT_ON_EXIT: r->on_exit = optarg; break;
    case OPT_NO_QUERY_LOG: r->log_queries = "0"; break;
    case OPT_LOG_LEVEL: r->log_level = optarg; break;
    case OPT_TCP_IDLE: r->tcp_idle = optarg; break;
    case OPT_TCP_MAX: r->tcp_max = optarg; break;
    case OPT_SCRIPT_MEM: r->script_mem = optarg; break;
    case OPT_SCRIPT_TIMEOUT: r->script_timeout = optarg; break;
    case OPT_HTTP_ADDR: r->http_addr = optarg; break;
    case OPT_TOKEN:
      r->token = optarg;
      r->token_file = NULL;
      break;
    case OPT_MAX_RULES: r->max_rules = optarg; break;
    case OPT_MODE: r->mode = optarg; break;
    case OPT_RULES_DIR: r->rules_dir = optarg; break;
    case OPT_DENY_WEBHOOK: r->deny_webhook = optarg; break;
    case OPT_SANDBOX_ID: r->sandbox_id = optarg; break;
    case OPT_BLOCK: r->block = optarg; break;
    case OPT_BLOCK_DOH: r->block_doh = "true"; break;
    case OPT_DOH_LIST: r->doh_list = optarg; break;
    case OPT_EXEMPT: r->exempt = optarg; break;
    case OPT_EXEMPT_UID: r->exempt_uid = optarg; break;
    case OPT_DYN_GRACE: r->dyn_grace = optarg; break;
    case OPT_DYN_MIN: r->dyn_min = optarg; break;
    case OPT_DYN_MAX: r->dyn_max = optarg; break;
    case OPT_NFT_TIMEOUT: r->nft_timeout = optarg; break;
    case OPT_CLEANUP: r->on_exit = "remove"; break;
    case 'h':
    case OPT_HELP: fputs(usage, stdout); return 1;
    default:
      if (optopt)
        snprintf(err, errlen,
                 "unknown flag or missing value near \"%s\" "
                 "(see sandgate egress --help)",
                 argv[optind - 1]);
      else
        snprintf(err, errlen,
                 "unknown flag \"%s\" (see sandgate egress --help)",
                 argv[optind - 1]);
      return -EINVAL;
    }
  }
  if (optind < argc) {
    snprintf(err, errlen, "unexpected argument \"%s\"", argv[optind]);
    return -EINVAL;
  }
  return 0;
}

/* OPENSANDBOX_EGRESS_MODE: tokens joined by "+", in any order and any
 * case; "dns" or "dns" with "nft". Anything else is OpenSandbox's fallback:
 * a warning and dns mode. */
static int parse_mode(const char *mode, int *nft) {
  *nft = 0;
  if (!mode)
    return 0;
  char *copy = strdup(mode), *save = NULL;
  if (!copy)
    return -ENOMEM;
  int dns = 0, with_nft = 0, other = 0;
  for (char *t = strtok_r(copy, "+", &save); t;
       t = strtok_r(NULL, "+", &save)) {
    while (*t == ' ')
      t++;
    size_t n = strlen(t);
    while (n && t[n - 1] == ' ')
      t[--n] = 0;
    if (strcasecmp(t, "dns") == 0)
      dns = 1;
    else if (strcasecmp(t, "nft") == 0)
      with_nft = 1;
    else
      other = 1;
  }
  free(copy);
  if (!dns || other) {
    sg_log_msg(SG_LOG_WARN, "egress.mode_invalid",
               "OPENSANDBOX_EGRESS_MODE=\"%s\" is not dns or dns+nft; "
               "running in dns mode",
               mode);
    return 0;
  }
  *nft = with_nft;
  return 0;
}

/* The dns+nft settings (read in both modes: the exemption also shapes the
 * interception). */
static int parse_nft(const raw_t *r, sg_egress_config_t *c, char *err,
                     size_t errlen) {
  int rc;
  unsigned long v;
  for (int f = 0; f < 2; f++) {
    sg_ipset_init(&c->doh[f], f ? 6 : 4);
    sg_ipset_init(&c->exempt[f], f ? 6 : 4);
  }
  c->block_reject = 1;
  if (r->block) {
    if (strcasecmp(r->block, "reject") == 0)
      c->block_reject = 1;
    else if (strcasecmp(r->block, "drop") == 0)
      c->block_reject = 0;
    else {
      snprintf(err, errlen,
               "SANDGATE_EGRESS_BLOCK: \"%s\" is not reject or drop", r->block);
      return -EINVAL;
    }
  }
  if (r->doh_list &&
      (rc = sg_ipset_parse_list("OPENSANDBOX_EGRESS_DOH_BLOCKLIST", r->doh_list,
                                0, c->doh, err, errlen)))
    return rc;
  /* OpenSandbox: blocking 443 without a list blocks all of it. */
  c->doh_all = truthy(r->block_doh) && c->doh[0].n == 0 && c->doh[1].n == 0;
  if (r->exempt &&
      (rc = sg_ipset_parse_list("OPENSANDBOX_EGRESS_NAMESERVER_EXEMPT",
                                r->exempt, 1, c->exempt, err, errlen)))
    return rc;
  c->exempt_uid = (uint32_t)geteuid();
  if (r->exempt_uid) {
    if ((rc = parse_uint("SANDGATE_EGRESS_EXEMPT_UID", r->exempt_uid, 0,
                         4294967294ul, &v, err, errlen)))
      return rc;
    c->exempt_uid = (uint32_t)v;
  }
  struct {
    const char *name, *raw;
    uint32_t *out, def;
  } secs[] = {
      {"SANDGATE_EGRESS_DYN_GRACE", r->dyn_grace, &c->dyn_grace_s, 60},
      {"SANDGATE_EGRESS_DYN_MIN", r->dyn_min, &c->dyn_min_s, 60},
      {"SANDGATE_EGRESS_DYN_MAX", r->dyn_max, &c->dyn_max_s, 360},
  };
  for (size_t i = 0; i < sizeof(secs) / sizeof(secs[0]); i++) {
    *secs[i].out = secs[i].def;
    if (secs[i].raw) {
      if ((rc = parse_uint(secs[i].name, secs[i].raw, 0, 604800, &v, err,
                           errlen)))
        return rc;
      *secs[i].out = (uint32_t)v;
    }
  }
  if (c->dyn_min_s < 1 || c->dyn_max_s < c->dyn_min_s) {
    snprintf(err, errlen,
             "SANDGATE_EGRESS_DYN_MIN/MAX: need 1 <= min <= max (got %u, %u)",
             c->dyn_min_s, c->dyn_max_s);
    return -EINVAL;
  }
  c->nft_timeout_ms = 100;
  if (r->nft_timeout) {
    if ((rc = parse_uint("SANDGATE_EGRESS_NFT_TIMEOUT_MS", r->nft_timeout, 1,
                         60000, &v, err, errlen)))
      return rc;
    c->nft_timeout_ms = (uint32_t)v;
  }
  return 0;
}

int sg_egress_config_load(sg_egress_config_t *c, int argc, char **argv,
                          char *err, size_t errlen) {
  raw_t r;
  int rc = collect(&r, argc, argv, err, errlen);
  if (rc)
    return rc;
  memset(c, 0, sizeof(*c));
  unsigned long v;

  const char *home = sg_env("SANDGATE_HOME");
  c->data_dir = home ? home : SG_DATA_DIR;

  c->upstream_timeout_ms = 5000;
  if (r.upstream_timeout) {
    /* OpenSandbox takes whole seconds; more than 120 is a typo, not a
     * wish, and is refused rather than silently clamped. */
    if ((rc = parse_uint("OPENSANDBOX_EGRESS_DNS_UPSTREAM_TIMEOUT",
                         r.upstream_timeout, 1, 120, &v, err, errlen)))
      return rc;
    c->upstream_timeout_ms = (uint32_t)v * 1000;
  }

  if (r.upstream) {
    if ((rc = parse_addr_list("OPENSANDBOX_EGRESS_DNS_UPSTREAM", r.upstream, 53,
                              c->upstreams, SG_UPSTREAM_MAX, &c->nupstreams,
                              err, errlen)))
      return rc;
    if (c->nupstreams == 0) {
      snprintf(err, errlen, "OPENSANDBOX_EGRESS_DNS_UPSTREAM: no address");
      return -EINVAL;
    }
  } else {
    char perr[256];
    rc = sg_upstream_from_resolv_conf(DEFAULT_RESOLV_CONF, c->upstreams,
                                      SG_UPSTREAM_MAX, perr, sizeof(perr));
    if (rc < 0) {
      snprintf(err, errlen,
               "no upstream nameserver: OPENSANDBOX_EGRESS_DNS_UPSTREAM is "
               "unset and %s",
               perr);
      return rc;
    }
    c->nupstreams = rc;
  }

  if (r.listen) {
    c->listen_explicit = 1;
    if ((rc = parse_addr_list("--listen", r.listen, DEFAULT_DNS_PORT, c->listen,
                              SG_DNS_SERVER_MAX_LISTEN, &c->nlisten, err,
                              errlen)))
      return rc;
  } else {
    char perr[64];
    sg_sockaddr_parse("127.0.0.1", DEFAULT_DNS_PORT, &c->listen[0], perr,
                      sizeof(perr));
    sg_sockaddr_parse("::1", DEFAULT_DNS_PORT, &c->listen[1], perr,
                      sizeof(perr));
    c->nlisten = 2;
  }

  c->policy_file = r.policy_file;
  if (r.rules && r.rules[0] == '@') {
    char *text = NULL;
    if ((rc = sg_file_read(r.rules + 1, &text, NULL, err, errlen)))
      return rc;
    c->rules_owned = text;
    c->rules = text;
  } else {
    c->rules = r.rules;
  }

  static char default_script[4096];
  snprintf(default_script, sizeof(default_script),
           "%s/policies/egress/default.lua", c->data_dir);
  c->script = r.script ? r.script : default_script;

  c->intercept = !truthy(r.no_intercept);
  /* Keep by default: with the redirect (and in dns+nft the filter) left in
   * place, a sandbox whose sidecar is gone has no DNS and no new
   * connections, rather than an open network. */
  c->remove_on_exit = 0;
  if (r.on_exit) {
    if (strcasecmp(r.on_exit, "remove") == 0)
      c->remove_on_exit = 1;
    else if (strcasecmp(r.on_exit, "keep") == 0)
      c->remove_on_exit = 0;
    else {
      snprintf(err, errlen,
               "SANDGATE_EGRESS_ON_EXIT: \"%s\" is not keep or remove",
               r.on_exit);
      return -EINVAL;
    }
  }

  c->log_queries =
      !(r.log_queries && (strcmp(r.log_queries, "0") == 0 ||
                          strcasecmp(r.log_queries, "false") == 0 ||
                          strcasecmp(r.log_queries, "off") == 0));
  c->log_level = SG_LOG_INFO;
  if (r.log_level) {
    c->log_level = sg_log_parse_level(r.log_level);
    if (c->log_level < 0) {
      snprintf(err, errlen,
               "SANDGATE_LOG_LEVEL: \"%s\" is not debug, info, warn or error",
               r.log_level);
      return -EINVAL;
    }
  }

  c->tcp_idle_ms = 10000;
  if (r.tcp_idle) {
    if ((rc = parse_uint("SANDGATE_DNS_TCP_IDLE_TIMEOUT", r.tcp_idle, 1, 3600,
                         &v, err, errlen)))
      return rc;
    c->tcp_idle_ms = (uint32_t)v * 1000;
  }
  c->tcp_max_clients = 256;
  if (r.tcp_max) {
    if ((rc = parse_uint("SANDGATE_DNS_TCP_MAX_CLIENTS", r.tcp_max, 1, 65535,
                         &v, err, errlen)))
      return rc;
    c->tcp_max_clients = (int)v;
  }
  c->script_mem = 64u << 20;
  if (r.script_mem) {
    if ((rc = parse_uint("SANDGATE_SCRIPT_MEMORY_MB", r.script_mem, 1, 4096, &v,
                         err, errlen)))
      return rc;
    c->script_mem = (size_t)v << 20;
  }
  /* The policy API. ":18080" (Go's form) listens on every address, v4 and
   * v6; "off" turns the API off (benchmarks, plain DNS server use). */
  const char *addr = r.http_addr ? r.http_addr : ":18080";
  c->api_enabled = strcasecmp(addr, "off") != 0;
  if (c->api_enabled) {
    char buf[300], perr[256];
    if (addr[0] == ':')
      snprintf(buf, sizeof(buf), "[::]%s", addr);
    else
      snprintf(buf, sizeof(buf), "%s", addr);
    if (sg_sockaddr_parse(buf, 18080, &c->api_listen, perr, sizeof(perr))) {
      snprintf(err, errlen, "OPENSANDBOX_EGRESS_HTTP_ADDR: %s", perr);
      return -EINVAL;
    }
  }
  if (r.token) {
    c->token = strdup(r.token);
  } else if (r.token_file) {
    char *text = NULL;
    if ((rc = sg_file_read(r.token_file, &text, NULL, err, errlen)))
      return rc;
    /* A mounted secret usually ends with a newline that is not part of it. */
    size_t n = strlen(text);
    while (n &&
           (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
      text[--n] = 0;
    c->token = text;
  }
  c->max_rules = 4096;
  if (r.max_rules) {
    if ((rc = parse_uint("OPENSANDBOX_EGRESS_MAX_RULES", r.max_rules, 0,
                         1000000, &v, err, errlen)))
      return rc;
    c->max_rules = (long)v;
  }
  c->rules_dir = r.rules_dir ? r.rules_dir : "/var/egress/rules";
  c->deny_webhook = r.deny_webhook;
  c->sandbox_id = r.sandbox_id;
  if ((rc = parse_mode(r.mode, &c->nft)))
    return rc;
  c->enforcement = c->nft ? "dns+nft" : "dns";
  if ((rc = parse_nft(&r, c, err, errlen)))
    return rc;

  c->script_timeout_ms = 100;
  if (r.script_timeout) {
    if ((rc = parse_uint("SANDGATE_SCRIPT_TIMEOUT_MS", r.script_timeout, 1,
                         60000, &v, err, errlen)))
      return rc;
    c->script_timeout_ms = (uint32_t)v;
  }
  return 0;
}

void sg_egress_config_free(sg_egress_config_t *c) {
  for (int f = 0; f < 2; f++) {
    sg_ipset_free(&c->doh[f]);
    sg_ipset_free(&c->exempt[f]);
  }
  free(c->rules_owned);
  c->rules_owned = NULL;
  free(c->token);
  c->token = NULL;
}
