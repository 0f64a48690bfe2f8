/* `sandgate egress`: the egress plane of one sandbox. Reads its
 * configuration from OpenSandbox's environment variables and from flags,
 * starts the policy DNS proxy, installs the DNS interception in the kernel,
 * and reloads the policy script on SIGHUP and when its file changes. */
#ifndef SG_EGRESS_EGRESS_H
#define SG_EGRESS_EGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns/server.h"
#include "dns/upstream.h"
#include "nft/ipset.h"

typedef struct {
  struct sockaddr_storage listen[SG_DNS_SERVER_MAX_LISTEN];
  int nlisten;
  int listen_explicit; /* --listen given: no default listeners */
  struct sockaddr_storage upstreams[SG_UPSTREAM_MAX];
  int nupstreams;
  uint32_t upstream_timeout_ms;
  const char *policy_file;
  const char *rules; /* JSON text */
  char *rules_owned; /* when --rules @file was read */
  const char *script;
  const char *data_dir;
  int intercept;
  int remove_on_exit;
  int log_queries;
  int log_level;
  uint32_t tcp_idle_ms;
  int tcp_max_clients;
  size_t script_mem;
  uint32_t script_timeout_ms;
  int api_enabled;
  struct sockaddr_storage api_listen;
  char *token; /* NULL: the API needs no token */
  long max_rules;
  const char *enforcement; /* "dns" or "dns+nft" */
  int nft;                 /* dns+nft: the kernel filter */
  int block_reject;        /* reject (1) or drop (0) what the filter blocks */
  int doh_all;             /* tcp/443 blocked everywhere */
  sg_ipset_t doh[2];       /* tcp/443 blocked to these */
  sg_ipset_t exempt[2];    /* exempt nameservers */
  uint32_t exempt_uid;
  uint32_t dyn_grace_s, dyn_min_s, dyn_max_s;
  uint32_t nft_timeout_ms;
  const char *rules_dir;   /* deny.always, allow.always, log_skip.always */
  const char *deny_webhook; /* NULL: no webhook */
  const char *sandbox_id;
} sg_egress_config_t;

/* Fills c from the environment, then from argv (a flag wins over its
 * variable). Returns 0, 1 when --help was printed, or a negative errno with
 * a message naming the bad variable or flag in err. */
int sg_egress_config_load(sg_egress_config_t *c, int argc, char **argv,
                          char *err, size_t errlen);
void sg_egress_config_free(sg_egress_config_t *c);

/* Runs the plane until SIGTERM/SIGINT. Returns the process exit code. */
int sg_egress_main(int argc, char **argv);

#endif
