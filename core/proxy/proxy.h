/* The HTTP/1.1 reverse-proxy engine behind `sandgate ingress` (and the
 * port proxy): client connections parsed with llhttp, a route callback that
 * decides where each request goes, backend connections with keep-alive
 * pools, bodies streamed both ways with backpressure, and any Upgrade
 * (WebSocket) turned into a byte-transparent tunnel after the backend's 101.
 *
 * One engine per libuv loop; it knows nothing about Lua. */
#ifndef SG_PROXY_PROXY_H
#define SG_PROXY_PROXY_H

#include <stdbool.h>
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
  int status;        /* 0: forward; >= 400: answer with this status */
  char message[512]; /* error body after the engine's error prefix */
  /* With a content type, message is the whole body as is (no prefix, no
   * newline): a JSON error, for example. */
  char content_type[64];
  char host[256]; /* backend: an IP address or a DNS name */
  uint16_t port;
  char path[8192]; /* the request-target sent to the backend */
  int keep_host;   /* forward the client's Host unchanged */
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
  const char *error_prefix; /* "OpenSandbox Ingress: " */
  /* The engine's own errors (502, 504, 431, 400) say only their reason
   * phrase ("Bad Gateway"), as Go's http.Error does in execd's proxy. */
  int plain_errors;
  const char *powered_by;      /* response header value, or NULL */
  const sg_ipset_t *trusted;   /* [2]: proxies whose X-Forwarded-* count */
  uint32_t header_timeout_ms;  /* a request head must arrive within this */
  uint32_t connect_timeout_ms; /* backend connect */
  uint32_t first_byte_timeout_ms;
  uint32_t idle_timeout_ms; /* no byte either way on a busy exchange */
  uint32_t keepalive_ms;    /* idle client connections */
  uint32_t pool_idle_ms;    /* idle backend connections */
  int pool_max_per_backend;
  size_t max_header_bytes; /* beyond: 431 */
} sg_proxy_opts_t;

typedef struct {
  uint64_t requests, responses_by_class[6]; /* [1..5]: 1xx..5xx */
  uint64_t upstream_connects, upstream_reused, upstream_retries;
  uint64_t tunnels, tunnels_open;
  uint64_t clients_open;
  uint64_t errors_502, errors_504, aborted;
} sg_proxy_stats_t;

/* Routes a request as the engine does for every request it reads: out is
 * reset, a request with more than one Host header is refused (400) without
 * asking, anything else goes to route(ctx, req, out). Also what the
 * gateway's /explain calls, so an explanation is the engine's own answer. */
void sg_proxy_route(sg_proxy_route_cb route, void *ctx,
                    const sg_proxy_request_t *req, sg_proxy_route_t *out);

/* Whether the client at ip is a trusted proxy (its X-Forwarded-* values are
 * kept): trusted is the [IPv4, IPv6] pair of sg_proxy_opts_t, or NULL. */
bool sg_proxy_trusted(const sg_ipset_t *trusted, const char *ip);

/* Whether a comma list (a Connection header's value) names token, case
 * insensitively. */
bool sg_proxy_list_has(const char *v, size_t vl, const char *token, size_t tl);

typedef void (*sg_proxy_header_cb)(void *ctx, const char *name, size_t nlen,
                                   const char *value, size_t vlen);

/* The headers of the request the engine sends to the backend for req and a
 * forwarding route rt, in the order sent, one emit call each: Host (the
 * backend's, or the client's with keep_host); the client's headers minus
 * the hop-by-hop ones (and those Connection names), Host, X-Forwarded-*
 * and those the route removes or sets; X-Forwarded-For, -Proto and -Host
 * (the client's values kept only when trusted); the route's headers; and
 * the framing the engine adds (Transfer-Encoding: chunked for a chunked
 * body, Connection and Upgrade for an upgrade). */
void sg_proxy_forward_headers(const sg_proxy_request_t *req,
                              const sg_proxy_route_t *rt, bool trusted,
                              bool chunked, bool upgrade,
                              sg_proxy_header_cb emit, void *ctx);

int sg_proxy_start(uv_loop_t *loop, const sg_proxy_opts_t *opts,
                   sg_proxy_t **out, char *err, size_t errlen);

/* Stops accepting; open exchanges finish; idle client and pooled backend
 * connections close. `done` runs once everything is closed (or at the
 * deadline, when the rest is closed hard) and the engine freed. */
void sg_proxy_drain(sg_proxy_t *p, uint32_t deadline_ms,
                    void (*done)(void *arg), void *arg);

const sg_proxy_stats_t *sg_proxy_stats(const sg_proxy_t *p);

#endif
