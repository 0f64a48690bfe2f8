#include "http/client.h"

#include <ares.h>
#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dns/ares_uv.h"
#include "util/common.h"
#include "util/sockaddr.h"

/* c-ares only notices a lookup's timeout when asked to process, so while
 * lookups are pending a coarse tick asks it (as the upstream transport
 * does). */
#define TICK_MS 50
/* Per try of one nameserver; the request's own timeout bounds the total. */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2
/* The addresses of one host that are tried, in the order c-ares gave. */
#define MAX_ADDRS 8
/* Only the status line matters: a read buffer per client is plenty, since
 * each read is parsed completely before the next. */
#define READ_BUF 4096

typedef enum {
  ST_NEW,        /* waiting for the loop to start it */
  ST_RESOLVING,  /* ares_getaddrinfo in progress */
  ST_CONNECTING, /* uv_tcp_connect to addrs[next_addr - 1] */
  ST_EXCHANGE,   /* connected: writing, then reading the status line */
  ST_DONE,       /* the callback has run; waiting for handles to close */
} state_t;

typedef struct req {
  sg_http_client_t *cl;
  struct req *prev, *next;
  state_t state;
  sg_http_client_cb cb;
  void *arg;
  uv_timer_t timer;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  llhttp_t parser;
  int tcp_open;  /* tcp initialized and its close callback not yet run */
  int handles;   /* libuv handles whose close callback is owed */
  int resolving; /* a getaddrinfo callback is owed */
  int status;    /* the status line's code, once parsed */
  int last_err;  /* of the last address tried */
  uint32_t timeout_ms;
  uint16_t port;
  struct sockaddr_storage addrs[MAX_ADDRS];
  int naddrs, next_addr;
  char *host;
  size_t text_len;
  char text[]; /* the whole request, then the host and its NUL */
} req_t;

struct sg_http_client {
  uv_loop_t *loop;
  sg_ares_uv_t io; /* the resolver's channel and its sockets */
  uv_timer_t tick;
  req_t *reqs;
  int lookups; /* getaddrinfo calls in progress */
  uint32_t mark;
  int closing;
  /* What keeps the struct alive: the tick timer, each poller, each
   * request not yet freed. */
  int refs;
  llhttp_settings_t settings;
  char rbuf[READ_BUF];
};

/* ---- URLs ---- */

static int host_char(unsigned char c) {
  return isalnum(c) || c == '-' || c == '.' || c == '_';
}

int sg_http_url_parse(const char *url, char *host, size_t hostlen,
                      uint16_t *port, char *path, size_t pathlen, char *err,
                      size_t errlen) {
  if (!url || !*url) {
    snprintf(err, errlen, "empty URL");
    return -EINVAL;
  }
  if (strncasecmp(url, "https://", 8) == 0) {
    snprintf(err, errlen,
             "URL \"%s\": https is not supported, sandgate has no TLS "
             "library; use an http:// URL (for example a relay inside the "
             "cluster)",
             url);
    return -EINVAL;
  }
  if (strncasecmp(url, "http://", 7) != 0) {
    snprintf(err, errlen, "URL \"%s\": not an http:// URL", url);
    return -EINVAL;
  }
  const char *a = url + 7;
  size_t alen = strcspn(a, "/?#");
  const char *rest = a + alen;
  if (memchr(a, '@', alen)) {
    snprintf(err, errlen, "URL \"%s\": user information is not supported", url);
    return -EINVAL;
  }

  const char *h, *after;
  size_t hlen;
  if (alen > 0 && a[0] == '[') {
    const char *close = memchr(a, ']', alen);
    if (!close) {
      snprintf(err, errlen, "URL \"%s\": unterminated [IPv6 address]", url);
      return -EINVAL;
    }
    h = a + 1;
    hlen = (size_t)(close - h);
    after = close + 1;
    char tmp[INET6_ADDRSTRLEN] = "";
    struct in6_addr in6;
    if (hlen < sizeof(tmp))
      memcpy(tmp, h, hlen);
    if (hlen >= sizeof(tmp) || uv_inet_pton(AF_INET6, tmp, &in6) != 0) {
      snprintf(err, errlen, "URL \"%s\": invalid IPv6 address", url);
      return -EINVAL;
    }
  } else {
    const char *colon = memchr(a, ':', alen);
    h = a;
    hlen = colon ? (size_t)(colon - a) : alen;
    after = a + hlen;
    for (size_t i = 0; i < hlen; i++) {
      if (!host_char((unsigned char)h[i])) {
        snprintf(err, errlen, "URL \"%s\": invalid character in the host", url);
        return -EINVAL;
      }
    }
  }
  if (hlen == 0) {
    snprintf(err, errlen, "URL \"%s\": no host", url);
    return -EINVAL;
  }
  if (hlen > 253 || hlen >= hostlen) {
    snprintf(err, errlen, "URL \"%s\": the host is too long", url);
    return -EINVAL;
  }

  unsigned long p = 80;
  if (after < rest) {
    /* Only ":port" may follow the host. */
    const char *d = after + 1;
    size_t dlen = (size_t)(rest - d);
    int ok = *after == ':' && dlen >= 1 && dlen <= 5;
    p = 0;
    for (size_t i = 0; ok && i < dlen; i++) {
      if (!isdigit((unsigned char)d[i]))
        ok = 0;
      else
        p = p * 10 + (unsigned long)(d[i] - '0');
    }
    if (!ok || p == 0 || p > 65535) {
      snprintf(err, errlen, "URL \"%s\": invalid port", url);
      return -EINVAL;
    }
  }

  /* The path as it goes on the request line: from the first '/' or '?',
   * up to the fragment, which is never sent. */
  size_t plen = strcspn(rest, "#");
  int add_slash = plen == 0 || rest[0] == '?';
  for (size_t i = 0; i < plen; i++) {
    unsigned char c = (unsigned char)rest[i];
    if (c <= 0x20 || c >= 0x7f) {
      snprintf(err, errlen,
               "URL \"%s\": a space or control character in the path (it "
               "must be percent-encoded)",
               url);
      return -EINVAL;
    }
  }
  if (plen + (size_t)add_slash >= pathlen) {
    snprintf(err, errlen, "URL \"%s\": the path is too long", url);
    return -EINVAL;
  }
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = (uint16_t)p;
  size_t o = 0;
  if (add_slash)
    path[o++] = '/';
  memcpy(path + o, rest, plen);
  path[o + plen] = '\0';
  return 0;
}

const char *sg_http_client_strerror(int status) {
  switch (status) {
  case UV_EOF: return "connection closed before a response";
  case UV_EPROTO: return "malformed HTTP response";
  case UV_EAI_NONAME: return "host name not found";
  case UV_ETIMEDOUT: return "timed out";
  default: return status < 0 ? uv_strerror(status) : "not an error";
  }
}

/* ---- lifetime ---- */

static void client_maybe_free(sg_http_client_t *cl) {
  if (cl->closing && cl->refs == 0)
    free(cl);
}

static void req_maybe_free(req_t *r) {
  if (r->state != ST_DONE || r->handles > 0 || r->resolving)
    return;
  sg_http_client_t *cl = r->cl;
  free(r);
  cl->refs--;
  client_maybe_free(cl);
}

static void on_req_timer_closed(uv_handle_t *h) {
  req_t *r = h->data;
  r->handles--;
  req_maybe_free(r);
}

static void connect_next(req_t *r);

static void on_tcp_closed(uv_handle_t *h) {
  req_t *r = h->data;
  r->handles--;
  r->tcp_open = 0;
  if (r->state == ST_DONE)
    req_maybe_free(r);
  else
    connect_next(r); /* the previous address failed */
}

/* Ends a request: its handles are closed, then the callback runs (so that
 * whatever the callback does, this request is already out of the way). */
static void finish(req_t *r, int status) {
  if (r->state == ST_DONE)
    return;
  sg_http_client_t *cl = r->cl;
  r->state = ST_DONE;
  if (r->prev)
    r->prev->next = r->next;
  else
    cl->reqs = r->next;
  if (r->next)
    r->next->prev = r->prev;
  if (r->tcp_open && !uv_is_closing((uv_handle_t *)&r->tcp))
    uv_close((uv_handle_t *)&r->tcp, on_tcp_closed);
  uv_close((uv_handle_t *)&r->timer, on_req_timer_closed);
  r->cb(r->arg, status);
}

/* ---- c-ares on the loop ---- */

/* Each of the resolver's poll handles keeps the client alive. */
static void hold(void *owner, int delta) {
  sg_http_client_t *cl = owner;
  cl->refs += delta;
  if (delta < 0)
    client_maybe_free(cl);
}

static int set_mark(int fd, uint32_t mark) {
  if (mark == 0)
    return 0;
  return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0 ? 0
                                                                       : -errno;
}

static int on_sock_config(ares_socket_t fd, int type, void *data) {
  sg_http_client_t *cl = data;
  /* Without the mark an intercepted lookup would come back to the proxy
   * itself: refuse the socket instead. */
  return set_mark(fd, cl->mark) == 0 ? 0 : -1;
}

static void on_tick(uv_timer_t *t) {
  sg_http_client_t *cl = container_of(t, sg_http_client_t, tick);
  ares_process_fd(cl->io.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  if (cl->lookups == 0)
    uv_timer_stop(t);
}

static int ares_to_uv(int status) {
  switch (status) {
  case ARES_ENOTFOUND:
  case ARES_ENODATA:
  case ARES_ENONAME: return UV_EAI_NONAME;
  case ARES_ETIMEOUT: return UV_ETIMEDOUT;
  case ARES_ENOMEM: return UV_ENOMEM;
  case ARES_ECANCELLED:
  case ARES_EDESTRUCTION: return UV_ECANCELED;
  default: return UV_EAI_FAIL;
  }
}

static void on_resolved(void *arg, int status, int timeouts,
                        struct ares_addrinfo *res) {
  (void)timeouts;
  req_t *r = arg;
  r->resolving = 0;
  r->cl->lookups--;
  if (r->state != ST_RESOLVING) {
    /* Timed out or cancelled meanwhile. */
    ares_freeaddrinfo(res);
    req_maybe_free(r);
    return;
  }
  if (status == ARES_SUCCESS && res) {
    for (struct ares_addrinfo_node *n = res->nodes; n && r->naddrs < MAX_ADDRS;
         n = n->ai_next) {
      if ((n->ai_family != AF_INET && n->ai_family != AF_INET6) ||
          n->ai_addrlen > sizeof(r->addrs[0]))
        continue;
      struct sockaddr_storage *ss = &r->addrs[r->naddrs++];
      memset(ss, 0, sizeof(*ss));
      memcpy(ss, n->ai_addr, n->ai_addrlen);
      if (n->ai_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(r->port);
      else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(r->port);
    }
  }
  ares_freeaddrinfo(res);
  if (r->naddrs == 0) {
    finish(r, status == ARES_SUCCESS ? UV_EAI_NONAME : ares_to_uv(status));
    return;
  }
  r->state = ST_CONNECTING;
  connect_next(r);
}

/* ---- the exchange ---- */

static int on_headers_complete(llhttp_t *p) {
  req_t *r = p->data;
  /* An interim answer (100 Continue) is followed by the real one. */
  if (p->status_code < 200)
    return 0;
  r->status = p->status_code;
  return HPE_PAUSED;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  req_t *r = h->data;
  *buf = uv_buf_init(r->cl->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  req_t *r = st->data;
  if (r->state != ST_EXCHANGE || nread == 0)
    return;
  llhttp_errno_t e;
  if (nread < 0) {
    if (nread != UV_EOF) {
      finish(r, (int)nread);
      return;
    }
    e = llhttp_finish(&r->parser);
  } else {
    e = llhttp_execute(&r->parser, buf->base, (size_t)nread);
  }
  if (r->status)
    finish(r, r->status);
  else if (e != HPE_OK)
    finish(r, UV_EPROTO);
  else if (nread < 0)
    finish(r, UV_EOF);
}

static void on_written(uv_write_t *w, int status) {
  req_t *r = container_of(w, req_t, write);
  if (status < 0 && r->state == ST_EXCHANGE)
    finish(r, status);
}

static void on_connect(uv_connect_t *c, int status) {
  req_t *r = container_of(c, req_t, connect);
  if (r->state != ST_CONNECTING)
    return; /* finished meanwhile: the handle is closing */
  if (status < 0) {
    r->last_err = status;
    uv_close((uv_handle_t *)&r->tcp, on_tcp_closed);
    return;
  }
  r->state = ST_EXCHANGE;
  llhttp_init(&r->parser, HTTP_RESPONSE, &r->cl->settings);
  r->parser.data = r;
  uv_buf_t b = uv_buf_init(r->text, (unsigned)r->text_len);
  int rc = uv_write(&r->write, (uv_stream_t *)&r->tcp, &b, 1, on_written);
  if (!rc)
    rc = uv_read_start((uv_stream_t *)&r->tcp, on_alloc, on_read);
  if (rc)
    finish(r, rc);
}

/* Connects to the next address, or fails the request with the last
 * address's error when none is left. Runs from the loop only. */
static void connect_next(req_t *r) {
  sg_http_client_t *cl = r->cl;
  if (r->next_addr >= r->naddrs) {
    finish(r, r->last_err ? r->last_err : UV_ECONNREFUSED);
    return;
  }
  const struct sockaddr *sa =
      (const struct sockaddr *)&r->addrs[r->next_addr++];
  int rc = uv_tcp_init_ex(cl->loop, &r->tcp, sa->sa_family);
  if (rc) {
    finish(r, rc);
    return;
  }
  r->tcp.data = r;
  r->tcp_open = 1;
  r->handles++;
  uv_os_fd_t fd;
  rc = uv_fileno((uv_handle_t *)&r->tcp, &fd);
  if (!rc)
    rc = set_mark(fd, cl->mark);
  if (!rc) {
    uv_tcp_nodelay(&r->tcp, 1);
    rc = uv_tcp_connect(&r->connect, &r->tcp, sa, on_connect);
  }
  if (rc) {
    r->last_err = rc;
    uv_close((uv_handle_t *)&r->tcp, on_tcp_closed);
  }
}

static void start(req_t *r) {
  sg_http_client_t *cl = r->cl;
  struct sockaddr_storage *ss = &r->addrs[0];
  /* An IP literal needs no lookup. */
  if (uv_ip4_addr(r->host, r->port, (struct sockaddr_in *)ss) == 0 ||
      uv_ip6_addr(r->host, r->port, (struct sockaddr_in6 *)ss) == 0) {
    r->naddrs = 1;
    r->state = ST_CONNECTING;
    connect_next(r);
    return;
  }
  r->state = ST_RESOLVING;
  r->resolving = 1;
  cl->lookups++;
  if (!uv_is_active((uv_handle_t *)&cl->tick))
    uv_timer_start(&cl->tick, on_tick, TICK_MS, TICK_MS);
  struct ares_addrinfo_hints hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  /* The callback may run from within this call (a name from the hosts
   * file): that is fine here, this runs from the loop. */
  ares_getaddrinfo(cl->io.ch, r->host, NULL, &hints, on_resolved, r);
}

static void on_req_timer(uv_timer_t *t) {
  req_t *r = container_of(t, req_t, timer);
  if (r->state == ST_NEW) {
    /* Started from the loop, so that no callback ever runs from within
     * sg_http_client_request. */
    uv_timer_start(&r->timer, on_req_timer, r->timeout_ms, 0);
    start(r);
    return;
  }
  finish(r, UV_ETIMEDOUT);
}

static int has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
      return 1;
  return 0;
}

int sg_http_client_request(sg_http_client_t *cl, const sg_http_client_req_t *q,
                           sg_http_client_cb cb, void *arg) {
  if (cl->closing)
    return -ECANCELED;
  if (!q->method || !q->host || !q->path || !cb || !*q->host ||
      q->path[0] != '/' || has_ctl(q->path) || has_ctl(q->method) ||
      has_ctl(q->host) || q->port == 0 || q->body_len > UINT32_MAX / 2)
    return -EINVAL;

  /* The Host header: brackets around an IPv6 address, the port unless it
   * is the default. */
  int v6 = strchr(q->host, ':') != NULL;
  char port[8] = "";
  if (q->port != 80)
    snprintf(port, sizeof(port), ":%u", q->port);
  const char *headers = q->headers ? q->headers : "";
  size_t host_len = strlen(q->host);
  size_t head_max =
      strlen(q->method) + strlen(q->path) + host_len + strlen(headers) + 160;
  size_t cap = head_max + q->body_len + host_len + 1;
  req_t *r = calloc(1, sizeof(*r) + cap);
  if (!r)
    return -ENOMEM;
  int n = snprintf(r->text, head_max,
                   "%s %s HTTP/1.1\r\n"
                   "Host: %s%s%s%s\r\n"
                   "User-Agent: sandgate\r\n"
                   "Content-Length: %zu\r\n"
                   "Connection: close\r\n"
                   "%s\r\n",
                   q->method, q->path, v6 ? "[" : "", q->host, v6 ? "]" : "",
                   port, q->body_len, headers);
  if (n < 0 || (size_t)n >= head_max) {
    free(r);
    return -EINVAL;
  }
  if (q->body_len)
    memcpy(r->text + n, q->body, q->body_len);
  r->text_len = (size_t)n + q->body_len;
  r->host = r->text + r->text_len;
  memcpy(r->host, q->host, host_len + 1);

  r->cl = cl;
  r->cb = cb;
  r->arg = arg;
  r->port = q->port;
  r->timeout_ms =
      q->timeout_ms ? q->timeout_ms : SG_HTTP_CLIENT_DEFAULT_TIMEOUT_MS;
  r->state = ST_NEW;
  uv_timer_init(cl->loop, &r->timer);
  r->timer.data = r;
  r->handles = 1;
  uv_timer_start(&r->timer, on_req_timer, 0, 0);
  r->next = cl->reqs;
  if (cl->reqs)
    cl->reqs->prev = r;
  cl->reqs = r;
  cl->refs++;
  return 0;
}

/* ---- new / close ---- */

int sg_http_client_new(uv_loop_t *loop, const sg_http_client_opts_t *opts,
                       sg_http_client_t **out, char *err, size_t errlen) {
  int lrc = sg_ares_uv_library_init(err, errlen);
  if (lrc)
    return lrc;
  if (opts->ndns_servers < 0 || opts->ndns_servers > SG_HTTP_CLIENT_MAX_DNS) {
    snprintf(err, errlen, "at most %d nameservers", SG_HTTP_CLIENT_MAX_DNS);
    return -EINVAL;
  }
  sg_http_client_t *cl = calloc(1, sizeof(*cl));
  if (!cl)
    return -ENOMEM;
  cl->loop = loop;
  cl->mark = opts->mark;

  struct ares_options o;
  memset(&o, 0, sizeof(o));
  o.timeout = DNS_TIMEOUT_MS;
  o.tries = DNS_TRIES;
  sg_ares_uv_init(&cl->io, loop, hold, cl);
  o.sock_state_cb = sg_ares_uv_sock_state;
  o.sock_state_cb_data = &cl->io;
  int rc = ares_init_options(&cl->io.ch, &o,
                             ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                                 ARES_OPT_SOCK_STATE_CB);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares init failed: %s", ares_strerror(rc));
    free(cl);
    return -ENOMEM;
  }
  if (opts->ndns_servers > 0) {
    struct ares_addr_port_node nodes[SG_HTTP_CLIENT_MAX_DNS];
    memset(nodes, 0, sizeof(nodes));
    for (int i = 0; i < opts->ndns_servers; i++) {
      const struct sockaddr *sa =
          (const struct sockaddr *)&opts->dns_servers[i];
      struct ares_addr_port_node *nd = &nodes[i];
      nd->next = i + 1 < opts->ndns_servers ? &nodes[i + 1] : NULL;
      nd->family = sa->sa_family;
      if (sa->sa_family == AF_INET)
        memcpy(&nd->addr.addr4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
      else
        memcpy(&nd->addr.addr6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
               16);
      nd->udp_port = nd->tcp_port = sg_sockaddr_port(sa);
    }
    rc = ares_set_servers_ports(cl->io.ch, nodes);
    if (rc != ARES_SUCCESS) {
      snprintf(err, errlen, "c-ares cannot use the nameservers: %s",
               ares_strerror(rc));
      ares_destroy(cl->io.ch);
      free(cl);
      return -EINVAL;
    }
  }
  ares_set_socket_configure_callback(cl->io.ch, on_sock_config, cl);

  llhttp_settings_init(&cl->settings);
  cl->settings.on_headers_complete = on_headers_complete;
  uv_timer_init(loop, &cl->tick);
  cl->refs = 1; /* the tick timer */
  *out = cl;
  return 0;
}

static void on_tick_closed(uv_handle_t *h) {
  sg_http_client_t *cl = container_of((uv_timer_t *)h, sg_http_client_t, tick);
  /* Destroyed from a close callback, never from within a c-ares callback
   * (sg_http_client_close may run from one): lookups still owed get
   * ARES_EDESTRUCTION and free their requests, and every socket is reported
   * unwatched, which closes the pollers. */
  ares_destroy(cl->io.ch);
  cl->refs--;
  client_maybe_free(cl);
}

void sg_http_client_close(sg_http_client_t *cl) {
  if (!cl || cl->closing)
    return;
  cl->closing = 1;
  cl->refs++; /* hold cl while the callbacks run */
  while (cl->reqs)
    finish(cl->reqs, UV_ECANCELED);
  uv_close((uv_handle_t *)&cl->tick, on_tick_closed);
  cl->refs--;
  client_maybe_free(cl);
}
