/* The HTTP/1.1 reverse-proxy engine behind `sandgate ingress` (and the
 * port proxy): client connections parsed with llhttp, a route callback that
 * decides where each request goes, backend connections with keep-alive
 * pools, bodies streamed both ways with backpressure, and any Upgrade
 * (WebSocket) turned into a byte-transparent tunnel after the backend's 101.
 *
 * One engine per libuv loop; it knows nothing about Lua. */
#ifndef SG_PROXY_PROXY_H
#define SG_PROXY_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "nft/ipset.h"

typedef struct sg_proxy sg_proxy_t;

typedef struct {
  const char *name, *value; /* as received; not NUL-terminated */
  size_t name_len, value_len;
} sg_proxy_header_t;

/* What the route callback sees; valid only during the call. */
typedef struct {
  const char *method;
  const char *target; /* the raw request-target */
  size_t target_len;
  const char *client_ip;
  const sg_proxy_header_t *headers;
  size_t nheaders;
} sg_proxy_request_t;

#define SG_PROXY_MAX_SET_HEADERS 16
#define SG_PROXY_MAX_REMOVE_HEADERS 16

/* The route callback's answer. Strings are copied by the callback into the
 * buffers given. */
typedef struct {
  int status;         /* 0: forward; >= 400: answer with this status */
  char message[512];  /* error body after the engine's error prefix */
  /* With a content type, message is the whole body as is (no prefix, no
   * newline): a JSON error, for example. */
  char content_type[64];
  char host[256];     /* backend: an IP address or a DNS name */
  uint16_t port;
  char path[8192];    /* the request-target sent to the backend */
  int keep_host;      /* forward the client's Host unchanged */
  int nset;
  char set_name[SG_PROXY_MAX_SET_HEADERS][64];
  char set_value[SG_PROXY_MAX_SET_HEADERS][512];
  int nremove;
  char remove[SG_PROXY_MAX_REMOVE_HEADERS][64]; /* lower-case */
  char sandbox[128]; /* the sandbox the route names, "" if none (explain) */
} sg_proxy_route_t;

typedef void (*sg_proxy_route_cb)(void *ctx, const sg_proxy_request_t *req,
                                  sg_proxy_route_t *out);

typedef struct {
  struct sockaddr_storage listen;
  int reuseport;
  sg_proxy_route_cb route;
  void *route_ctx;
  const char *error_prefix;    /* "OpenSandbox Ingress: " */
  /* The engine's own errors (502, 504, 431, 400) say only their reason
   * phrase ("Bad Gateway"), as Go's http.Error does in execd's proxy. */
  int plain_errors;
  const char *powered_by;      /* response header value, or NULL */
  const sg_ipset_t *trusted;   /* [2]: proxies whose X-Forwarded-* count */
  uint32_t header_timeout_ms;  /* a request head must arrive within this */
  uint32_t connect_timeout_ms; /* backend connect */
  uint32_t first_byte_timeout_ms;
  uint32_t idle_timeout_ms;    /* no byte either way on a busy exchange */
  uint32_t keepalive_ms;       /* idle client connections */
  uint32_t pool_idle_ms;       /* idle backend connections */
  int pool_max_per_backend;
  size_t max_header_bytes;     /* beyond: 431 */
} sg_proxy_opts_t;

typedef struct {
  uint64_t requests, responses_by_class[6]; /* [1..5]: 1xx..5xx */
  uint64_t upstream_connects, upstream_reused, upstream_retries;
  uint64_t tunnels, tunnels_open;
  uint64_t clients_open;
  uint64_t errors_502, errors_504, aborted;
} sg_proxy_stats_t;

int sg_proxy_start(uv_loop_t *loop, const sg_proxy_opts_t *opts,
                   sg_proxy_t **out, char *err, size_t errlen);

/* Stops accepting; open exchanges finish; idle client and pooled backend
 * connections close. `done` runs once everything is closed (or at the
 * deadline, when the rest is closed hard) and the engine freed. */
void sg_proxy_drain(sg_proxy_t *p, uint32_t deadline_ms,
                    void (*done)(void *arg), void *arg);

const sg_proxy_stats_t *sg_proxy_stats(const sg_proxy_t *p);

#endif
