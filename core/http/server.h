/* A small HTTP/1.1 server for the sidecar's own APIs (the egress policy API,
 * later admin and metrics endpoints). Handlers are synchronous: the server
 * reads a whole request (headers and the complete body, buffered up to a
 * limit), calls the handler, and the handler answers before it returns.
 * Keep-alive and pipelining are supported, with answers in request order;
 * limits and timeouts bound what one client can hold. */
#ifndef SG_HTTP_SERVER_H
#define SG_HTTP_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

typedef struct sg_http_server sg_http_server_t;

/* What the handler sees. Valid only during the call; every string is
 * NUL-terminated as well as counted. */
typedef struct {
  const char *method; /* "GET", "PATCH", ... */
  const char *path;   /* the URL path as sent (still percent-encoded) */
  size_t path_len;
  const char *query; /* after '?', raw; NULL when the URL has none */
  size_t query_len;
  const char *body; /* the whole body, de-chunked; "" when there is none */
  size_t body_len;
  const char *client_ip;
  /* Private: the header table sg_http_header() reads. */
  const void *internal_;
} sg_http_request_t;

/* The value of a request header (or of a trailer after a chunked body),
 * found case-insensitively, the first one when a name repeats, without
 * surrounding whitespace; NULL when absent. len may be NULL. */
const char *sg_http_header(const sg_http_request_t *req, const char *name,
                           size_t *len);

/* The handle a handler answers through; valid only during the call. */
typedef struct sg_http_reply sg_http_reply_t;

/* Answers the request. Exactly one call per request: a second is ignored,
 * and a handler that returns without answering gets a 500 sent for it.
 * content_type may be NULL (no Content-Type). extra_headers is NULL or
 * complete "Name: value\r\n" lines. The server adds Content-Length and, when
 * the connection ends after this answer, "Connection: close". A status
 * outside 200..599 is a bug in the caller and is sent as 500. */
void sg_http_respond(sg_http_reply_t *reply, int status,
                     const char *content_type, const char *body, size_t len,
                     const char *extra_headers);

typedef void (*sg_http_handler)(void *ctx, const sg_http_request_t *req,
                                sg_http_reply_t *reply);

/* Zero in a limit or timeout means its default. */
typedef struct {
  struct sockaddr_storage listen;
  size_t max_body;   /* bytes; over it: 413 and close (1 MiB) */
  size_t max_header; /* request line and headers; over it: 431 (16 KiB) */
  /* From connect (or, on a kept-alive connection, from the first byte of
   * the next request) to the end of the headers (10 s). */
  uint32_t header_timeout_ms;
  uint32_t body_timeout_ms; /* from the end of the headers (30 s) */
  uint32_t idle_timeout_ms; /* between requests on a kept-alive one (60 s) */
  int max_clients;          /* connections beyond it are closed at once (128) */
  sg_http_handler handler;
  void *ctx;
} sg_http_server_opts_t;

#define SG_HTTP_DEFAULT_MAX_BODY (1u << 20)
#define SG_HTTP_DEFAULT_MAX_HEADER (16u << 10)
#define SG_HTTP_DEFAULT_HEADER_TIMEOUT_MS 10000
#define SG_HTTP_DEFAULT_BODY_TIMEOUT_MS 30000
#define SG_HTTP_DEFAULT_IDLE_TIMEOUT_MS 60000
#define SG_HTTP_DEFAULT_MAX_CLIENTS 128

/* Binds and listens. On failure nothing is left open and err names the
 * address. */
int sg_http_server_start(uv_loop_t *loop, const sg_http_server_opts_t *opts,
                         sg_http_server_t **out, char *err, size_t errlen);

/* Stops listening and drops every client at once (answers not yet sent are
 * lost). The handler is not called again after this, so its ctx may be
 * freed right away. Frees itself once libuv released the handles; NULL is a
 * no-op. May be called from a handler. */
void sg_http_server_close(sg_http_server_t *srv);

/* The port actually bound (useful when listening on port 0). */
uint16_t sg_http_server_port(const sg_http_server_t *srv);

#endif
