/* The policy DNS server: UDP and TCP listeners, the per-query lifecycle
 * (parse, ask the decide callback, answer NXDOMAIN or forward upstream and
 * relay the answer), and its counters. It knows nothing about Lua: the
 * verdict comes from a callback. */
#ifndef SG_DNS_SERVER_H
#define SG_DNS_SERVER_H

#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "dns/message.h"
#include "dns/upstream.h"

#define SG_DNS_SERVER_MAX_LISTEN 8

typedef struct sg_dns_server sg_dns_server_t;

/* What the decide callback sees. Valid only during the call. */
typedef struct {
  const sg_dns_query_t *query;
  const char *qtype_name;
  const char *client_ip;
  const char *transport; /* "udp" or "tcp" */
} sg_dns_request_t;

/* Returns SG_DNS_FORWARD to send the query upstream, or the rcode of the
 * answer the proxy gives itself (NXDOMAIN for a plain deny). */
#define SG_DNS_FORWARD (-1)
typedef int (*sg_dns_decide_cb)(void *ctx, const sg_dns_request_t *req);

/* An upstream answer the answer callback holds back (see below). */
typedef struct sg_dns_held sg_dns_held_t;

/* What the answer callback decides for an answer the upstream gave. */
enum {
  SG_DNS_RELEASE = 0, /* send it now */
  SG_DNS_HOLD = 1,    /* the callback keeps `held` and calls
                         sg_dns_server_release(held, ok) later */
  SG_DNS_REFUSE = 2,  /* answer SERVFAIL instead */
};
typedef int (*sg_dns_answer_cb)(void *ctx, const uint8_t *answer, size_t len,
                                sg_dns_held_t *held);

/* Sends a held answer (ok = 1) or SERVFAIL in its place (ok = 0). Must be
 * called exactly once for every SG_DNS_HOLD, also while the server closes
 * (then nothing is sent). */
void sg_dns_server_release(sg_dns_held_t *held, int ok);

typedef struct {
  struct sockaddr_storage listen[SG_DNS_SERVER_MAX_LISTEN];
  int nlisten;
  uint32_t tcp_idle_ms; /* an idle TCP client is closed after this */
  int tcp_max_clients;  /* connections beyond this are closed at once */
  sg_upstream_t *upstream;
  sg_dns_decide_cb decide;
  void *decide_ctx;
  /* Optional: sees every answer of an allowed query before it is relayed
   * (with the upstream's ID), with decide_ctx. */
  sg_dns_answer_cb on_answer;
} sg_dns_server_opts_t;

typedef struct {
  uint64_t queries; /* well-formed queries handed to the policy */
  uint64_t allowed;
  uint64_t denied;
  uint64_t malformed;       /* answered FORMERR / NOTIMP */
  uint64_t dropped;         /* too short or a response: not answered */
  uint64_t upstream_failed; /* answered SERVFAIL */
  uint64_t truncated;       /* answered with TC for the client to retry */
  uint64_t held;            /* answers held back by on_answer */
  uint64_t refused;         /* answers on_answer replaced by SERVFAIL */
  uint64_t tcp_refused;     /* connections over the cap */
} sg_dns_stats_t;

/* Binds every listener (UDP and TCP on each address). On failure nothing is
 * left open and err names the address. */
int sg_dns_server_start(uv_loop_t *loop, const sg_dns_server_opts_t *opts,
                        sg_dns_server_t **out, char *err, size_t errlen);

/* Stops listening and closes every client; answers still in flight are
 * dropped. Frees itself once libuv released the handles. */
void sg_dns_server_close(sg_dns_server_t *srv);

const sg_dns_stats_t *sg_dns_server_stats(const sg_dns_server_t *srv);

#endif
