/* A minimal one-shot HTTP/1.1 client for the sidecar's own outgoing calls
 * (the deny webhook). Everything runs on the libuv loop: the URL's host is
 * resolved with c-ares (an IP literal skips it), then each address it gave
 * is tried in turn with a uv_tcp connect; the request goes out whole with
 * `Connection: close`, and the answer is parsed with llhttp only as far as
 * its status line. One connection per request, no keep-alive, no TLS: only
 * http:// URLs. */
#ifndef SG_HTTP_CLIENT_H
#define SG_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define SG_HTTP_CLIENT_MAX_DNS 10
/* A host name in a URL: 253 characters, or a bracketed IPv6 address. */
#define SG_HTTP_HOST_MAX 256
#define SG_HTTP_PATH_MAX 2048
#define SG_HTTP_CLIENT_DEFAULT_TIMEOUT_MS 5000

/* Splits an http:// URL into host (without brackets for IPv6), port (80
 * when absent) and path (with its query; "/" when absent; the fragment is
 * dropped). https:// is refused: there is no TLS library in sandgate.
 * Returns 0, or -EINVAL with a message in err naming the URL. */
int sg_http_url_parse(const char *url, char *host, size_t hostlen,
                      uint16_t *port, char *path, size_t pathlen, char *err,
                      size_t errlen);

typedef struct sg_http_client sg_http_client_t;

typedef struct {
  /* The nameservers host names are resolved with; none means the system's
   * (resolv.conf). Inside an intercepted sandbox pass the upstreams, with
   * the bypass mark, so that the lookup does not come back to the proxy. */
  struct sockaddr_storage dns_servers[SG_HTTP_CLIENT_MAX_DNS];
  int ndns_servers;
  uint32_t mark; /* SO_MARK on every socket (DNS and TCP); 0 = none */
} sg_http_client_opts_t;

/* One request. Every string is copied: none needs to outlive the call. */
typedef struct {
  const char *method; /* "POST" */
  const char *host;   /* a name, or an IP literal (IPv6 without brackets) */
  uint16_t port;
  const char *path; /* "/hook?x=1": no space or control character */
  /* NULL or complete "Name: value\r\n" lines. Host, Content-Length,
   * User-Agent and Connection: close are always sent. */
  const char *headers;
  const char *body;
  size_t body_len;
  /* From the start to the status line: resolution, connect, send and the
   * wait for the answer all count. 0 means 5 s. */
  uint32_t timeout_ms;
} sg_http_client_req_t;

/* The outcome of a request: the HTTP status (200..599), or a negative
 * libuv error code: UV_ECONNREFUSED, UV_ECONNRESET, UV_ETIMEDOUT,
 * UV_EAI_NONAME (the host does not resolve), UV_EOF (closed before the
 * status line), UV_EPROTO (not an HTTP answer), UV_ECANCELED (the client
 * was closed), ... */
typedef void (*sg_http_client_cb)(void *arg, int status);

int sg_http_client_new(uv_loop_t *loop, const sg_http_client_opts_t *opts,
                       sg_http_client_t **out, char *err, size_t errlen);

/* Starts a request. Returns 0, after which cb runs exactly once, later,
 * from the loop (never from within this call); or a negative errno, and cb
 * never runs. */
int sg_http_client_request(sg_http_client_t *c, const sg_http_client_req_t *r,
                           sg_http_client_cb cb, void *arg);

/* Cancels every request in flight: their callbacks run with UV_ECANCELED
 * before this returns. Frees itself once libuv and c-ares released their
 * handles and sockets. NULL is a no-op. May be called from a callback. */
void sg_http_client_close(sg_http_client_t *c);

/* A phrase for a negative status (a human-readable error). */
const char *sg_http_client_strerror(int status);

#endif
