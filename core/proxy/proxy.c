#include "proxy/proxy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llhttp.h"
#include "proxy/resolve.h"
#include "util/log.h"
#include "util/sockaddr.h"

/* Writes queued on one side beyond this stop reading the other side until
 * they drain: a slow reader never makes the proxy buffer without bound. */
#define WRITE_HIGH_WATER (1u << 20)
#define READ_CHUNK (64 * 1024)
#define MAX_HEADERS 128

#ifndef container_of
#define container_of(ptr, type, member)                                        \
  ((type *)((char *)(ptr)-offsetof(type, member)))
#endif

typedef struct client client_t;
typedef struct upstream upstream_t;
typedef struct backend backend_t;

/* A connection's deadline. Setting or moving it writes a timestamp; the
 * libuv timer behind it is re-armed only when a deadline comes earlier than
 * the time it is armed for, or when it fires before the current deadline.
 * An exchange moves its deadlines several times per request (head, first
 * byte, idle, pool): a timer-heap update for each cost ~2% of the proxy's
 * CPU. */
typedef struct {
  uv_timer_t timer; /* timer.data: the connection */
  uint64_t due;     /* loop time of the deadline; 0: none */
  uint64_t armed;   /* loop time the timer fires at; 0: not armed */
  uv_timer_cb expired;
} deadline_t;

/* A header as offsets into a head buffer. */
typedef struct {
  size_t n, nl, v, vl;
} hdr_t;

/* A message head being collected: the bytes of the request line or status
 * text and of every header, and where each one is. */
typedef struct {
  char *b;
  size_t len, cap;
  hdr_t h[MAX_HEADERS];
  size_t nh;
  size_t url, url_len; /* request-target, or the status reason */
  int in_value;        /* the last callback was a header value */
  int too_big;         /* over max_header_bytes or MAX_HEADERS */
  /* Filled by head_classify once the head is complete. */
  uint8_t kind[MAX_HEADERS];
  int first[9]; /* index of the first header of each kind, or -1 */
} head_t;

/* What a header is to the proxy. K_HOP, K_UPGRADE and K_CONN do not go
 * past this hop. */
enum { K_OTHER, K_HOP, K_HOST, K_XFF, K_XFP, K_XFH, K_CLEN, K_UPGRADE, K_CONN };

enum {
  C_HEAD,   /* reading a request head */
  C_ROUTED, /* head done, waiting for the backend connection */
  C_BODY,   /* streaming the request body */
  C_WAIT,   /* request sent, waiting for the rest of the response */
  C_TUNNEL, /* after a 101 */
  C_CLOSING,
};

enum { U_CONNECTING, U_BUSY, U_IDLE, U_TUNNEL, U_CLOSING };

struct upstream {
  uv_tcp_t tcp;
  deadline_t dl;
  uv_connect_t connect;
  sg_proxy_t *p;
  client_t *c; /* the exchange it serves; NULL in the pool */
  /* In the pool: in its backend's idle list. */
  backend_t *be;
  upstream_t *prev, *next;
  llhttp_t parser;
  head_t head;
  char host[256]; /* the backend: host and port (the pool key) */
  uint16_t port;
  uint32_t hash;
  int state;
  int reused;      /* taken from the pool */
  int got_bytes;   /* a byte of the response arrived */
  int chunk_out;   /* the client gets the body re-chunked */
  int close_after; /* the client connection ends with this response */
  int done;        /* the response is complete (set inside the parser) */
  /* The response head for the client, held back so that it goes out in
   * one write with the first body bytes. */
  char *head_out;
  size_t head_out_len, head_out_cap;
  int reading;
  int handles;
};

struct client {
  uv_tcp_t tcp;
  deadline_t dl;
  sg_proxy_t *p;
  client_t *prev, *next;
  llhttp_t parser;
  char ip[64];
  bool trusted; /* a configured proxy: its X-Forwarded-* are kept */
  /* Unparsed input is in[off, len): the loop's shared read buffer during
   * a read callback, else buf (owned), which holds only what a read left
   * over (a pipelined request, a body held back). */
  const char *in;
  char *buf;
  size_t len, cap, off;
  int shared; /* the current read went into the shared buffer */
  head_t head;
  int state;
  int req_chunked, req_done, req_has_body, keep_alive, http10, is_head;
  int upgrade;   /* the request asks for an Upgrade */
  int responded; /* a response head went out */
  int ending;    /* shutting down after the last write */
  int reading;
  int handles;
  upstream_t *up;
  /* The backend and the request head sent to it (kept for a retry). */
  char up_host[256];
  char sandbox[128]; /* the route's sandbox id, "" if it named none */
  uint16_t up_port;
  uint32_t up_hash;
  char *out;
  size_t out_len, out_cap;
  int retried;
  sg_resolve_req_t *resolving;
  /* Body bytes (already framed for the backend) that arrived before the
   * backend connection was ready. */
  char *pend;
  size_t pend_len, pend_cap;
};

/* A backend's idle connections (the pool), found by host and port. */
struct backend {
  backend_t *next; /* in its hash bucket */
  uint32_t hash;
  uint16_t port;
  upstream_t *idle;
  int nidle;
  char host[];
};

struct sg_proxy {
  uv_loop_t *loop;
  sg_proxy_opts_t o;
  uv_tcp_t listener;
  int listening;
  client_t *clients;
  /* The pool: backends by hash of host and port. */
  backend_t **backends;
  size_t nbuckets, nbackends;
  int pooled;
  sg_proxy_stats_t stats;
  char *rbuf; /* the shared read buffer of client connections */
  char *ubuf; /* and of backend connections */
  sg_resolver_t *resolver;
  sg_proxy_route_t route; /* scratch for the route callback */
  /* Head buffers of finished exchanges, for the next ones (a malloc and a
   * free per head otherwise). */
  struct {
    char *b;
    size_t cap;
  } spare[32];
  int nspare;
  int draining;
  uv_timer_t drain_timer;
  void (*drain_done)(void *);
  void *drain_arg;
  int handles;
};

static llhttp_settings_t req_settings, resp_settings;

/* ---- small buffers ---- */

static bool grow(char **b, size_t *cap, size_t need) {
  if (need <= *cap)
    return true;
  size_t c = *cap ? *cap : 1024;
  while (c < need)
    c *= 2;
  char *nb = realloc(*b, c);
  if (!nb)
    return false;
  *b = nb;
  *cap = c;
  return true;
}

typedef struct {
  char *b;
  size_t len, cap;
  bool oom;
} sb_t;

static void sb_grow(sb_t *s, size_t n) {
  if (s->oom || !grow(&s->b, &s->cap, s->len + n + 1))
    s->oom = true;
}

static inline void sb_add(sb_t *s, const char *p, size_t n) {
  if (s->len + n + 1 > s->cap) {
    sb_grow(s, n);
    if (s->oom)
      return;
  }
  memcpy(s->b + s->len, p, n);
  s->len += n;
}

#define SPARE_MAX_CAP 16384

/* An empty builder, on a spare buffer when there is one. */
static void sb_take(sg_proxy_t *p, sb_t *s) {
  *s = (sb_t){0};
  if (p->nspare) {
    p->nspare--;
    s->b = p->spare[p->nspare].b;
    s->cap = p->spare[p->nspare].cap;
  }
}

/* A head buffer that is done with: kept for the next head, or freed. */
static void spare_give(sg_proxy_t *p, char *b, size_t cap) {
  if (b && cap <= SPARE_MAX_CAP &&
      p->nspare < (int)(sizeof(p->spare) / sizeof(p->spare[0]))) {
    p->spare[p->nspare].b = b;
    p->spare[p->nspare].cap = cap;
    p->nspare++;
  } else {
    free(b);
  }
}

static void sb_str(sb_t *s, const char *p) {
  sb_add(s, p, strlen(p));
}

/* A number in decimal (or hex) at dst (24 bytes suffice); returns its
 * length. No printf on the per-request path. */
static size_t fmt_num(char *dst, unsigned long v, unsigned base) {
  char tmp[24];
  int i = (int)sizeof(tmp);
  do {
    unsigned d = (unsigned)(v % base);
    tmp[--i] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v);
  memcpy(dst, tmp + i, sizeof(tmp) - (size_t)i);
  return sizeof(tmp) - (size_t)i;
}

static void sb_num(sb_t *s, unsigned long v, unsigned base) {
  char tmp[24];
  sb_add(s, tmp, fmt_num(tmp, v, base));
}

/* "Name: value\r\n" */
static void sb_header(sb_t *s, const char *n, size_t nl, const char *v,
                      size_t vl) {
  sb_add(s, n, nl);
  sb_add(s, ": ", 2);
  sb_add(s, v, vl);
  sb_add(s, "\r\n", 2);
}

static void sb_fmt(sb_t *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_fmt(sb_t *s, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n > 0)
    sb_add(s, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* ---- message heads ---- */

static void head_reset(head_t *h) {
  h->len = 0;
  h->nh = 0;
  h->url = h->url_len = 0;
  h->in_value = 0;
  h->too_big = 0;
}

static bool head_append(head_t *h, size_t max, const char *at, size_t n) {
  if (h->len + n > max) {
    h->too_big = 1;
    return false;
  }
  if (!grow(&h->b, &h->cap, h->len + n)) {
    h->too_big = 1;
    return false;
  }
  memcpy(h->b + h->len, at, n);
  h->len += n;
  return true;
}

/* A piece of the request-target (or of the status reason). */
static int head_line(head_t *h, size_t max, const char *at, size_t n) {
  if (h->url_len == 0)
    h->url = h->len;
  if (!head_append(h, max, at, n))
    return -1;
  h->url_len += n;
  return 0;
}

static int head_field(head_t *h, size_t max, const char *at, size_t n) {
  if (h->in_value || h->nh == 0) {
    if (h->nh == MAX_HEADERS) {
      h->too_big = 1;
      return -1;
    }
    h->h[h->nh++] = (hdr_t){h->len, 0, 0, 0};
    h->in_value = 0;
  }
  if (!head_append(h, max, at, n))
    return -1;
  h->h[h->nh - 1].nl += n;
  return 0;
}

static int head_value(head_t *h, size_t max, const char *at, size_t n) {
  if (h->nh == 0)
    return 0;
  hdr_t *x = &h->h[h->nh - 1];
  if (!h->in_value) {
    x->v = h->len;
    h->in_value = 1;
  }
  if (!head_append(h, max, at, n))
    return -1;
  x->vl += n;
  return 0;
}

/* The next element of a comma list from *i on, without the blanks around
 * it: its start, and its length in *n (0 for an empty element); NULL at the
 * end of the list. */
static const char *list_next(const char *v, size_t vl, size_t *i, size_t *n) {
  while (*i < vl && (v[*i] == ' ' || v[*i] == '\t' || v[*i] == ','))
    (*i)++;
  if (*i >= vl)
    return NULL;
  size_t s = *i;
  while (*i < vl && v[*i] != ',')
    (*i)++;
  size_t e = *i;
  while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
    e--;
  *n = e - s;
  return v + s;
}

bool sg_proxy_list_has(const char *v, size_t vl, const char *token, size_t tl) {
  size_t i = 0, n;
  for (const char *t; (t = list_next(v, vl, &i, &n));)
    if (n == tl && strncasecmp(t, token, tl) == 0)
      return true;
  return false;
}

/* a (any case) equals b (lower case) over n bytes; header names are
 * tokens, so OR-ing 0x20 folds exactly the letters a lower-case b can
 * match. */
static inline bool eq_ci(const char *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)(a[i] | 0x20) != (unsigned char)b[i] && a[i] != b[i])
      return false;
  return true;
}

static uint8_t kind_of(const char *n, size_t l) {
  switch (l) {
  case 2: return eq_ci(n, "te", 2) ? K_HOP : K_OTHER;
  case 4: return eq_ci(n, "host", 4) ? K_HOST : K_OTHER;
  case 7:
    return eq_ci(n, "upgrade", 7)   ? K_UPGRADE
           : eq_ci(n, "trailer", 7) ? K_HOP
                                    : K_OTHER;
  case 10:
    return eq_ci(n, "connection", 10)   ? K_CONN
           : eq_ci(n, "keep-alive", 10) ? K_HOP
                                        : K_OTHER;
  case 14: return eq_ci(n, "content-length", 14) ? K_CLEN : K_OTHER;
  case 15: return eq_ci(n, "x-forwarded-for", 15) ? K_XFF : K_OTHER;
  case 16:
    return eq_ci(n, "proxy-connection", 16)   ? K_HOP
           : eq_ci(n, "x-forwarded-host", 16) ? K_XFH
                                              : K_OTHER;
  case 17:
    return eq_ci(n, "transfer-encoding", 17)   ? K_HOP
           : eq_ci(n, "x-forwarded-proto", 17) ? K_XFP
                                               : K_OTHER;
  default: return K_OTHER;
  }
}

/* Whether a Connection list names any header besides Keep-Alive and
 * Upgrade (hop-by-hop already): almost every one says only "keep-alive",
 * "close" or "upgrade", and then no header needs to be looked up in it. */
static bool conn_names_others(const char *v, size_t vl) {
  size_t i = 0, n;
  for (const char *t; (t = list_next(v, vl, &i, &n));)
    if (n && !(n == 5 && eq_ci(t, "close", 5)) &&
        !(n == 10 && eq_ci(t, "keep-alive", 10)) &&
        !(n == 7 && eq_ci(t, "upgrade", 7)))
      return true;
  return false;
}

/* Classifies every header of a complete head once, including those the
 * Connection header names (they are hop-by-hop too). */
static void head_classify(head_t *h) {
  for (int k = 0; k < 9; k++)
    h->first[k] = -1;
  for (size_t i = 0; i < h->nh; i++) {
    uint8_t k = kind_of(h->b + h->h[i].n, h->h[i].nl);
    h->kind[i] = k;
    if (h->first[k] < 0)
      h->first[k] = (int)i;
  }
  if (h->first[K_CONN] < 0)
    return;
  const hdr_t *c = &h->h[h->first[K_CONN]];
  if (!conn_names_others(h->b + c->v, c->vl))
    return;
  for (size_t i = 0; i < h->nh; i++)
    if (h->kind[i] != K_HOP && h->kind[i] != K_CONN &&
        sg_proxy_list_has(h->b + c->v, c->vl, h->b + h->h[i].n, h->h[i].nl))
      h->kind[i] = K_HOP;
}

/* A header that does not travel past this hop. */
static bool is_hop(const head_t *h, size_t i) {
  return h->kind[i] == K_HOP || h->kind[i] == K_UPGRADE || h->kind[i] == K_CONN;
}

/* The value of the first header of a kind, or NULL. */
static const char *head_kind(const head_t *h, int kind, size_t *len) {
  int i = h->first[kind];
  if (i < 0)
    return NULL;
  *len = h->h[i].vl;
  return h->b + h->h[i].v;
}

/* name (nl bytes, any case) equals the string s (any case). */
static bool name_eq(const char *name, size_t nl, const char *s) {
  return strncasecmp(name, s, nl) == 0 && s[nl] == 0;
}

/* ---- handles and lifetimes ---- */

static void maybe_done_draining(sg_proxy_t *p);

/* ---- deadlines ---- */

static void deadline_fire(uv_timer_t *t) {
  deadline_t *d = container_of(t, deadline_t, timer);
  d->armed = 0;
  if (!d->due)
    return;
  uint64_t now = uv_now(t->loop);
  if (now < d->due) {
    /* Moved on since the timer was armed. */
    d->armed = d->due;
    uv_timer_start(t, deadline_fire, d->due - now, 0);
    return;
  }
  d->due = 0;
  d->expired(t);
}

static void deadline_init(uv_loop_t *loop, deadline_t *d, void *owner,
                          uv_timer_cb expired) {
  uv_timer_init(loop, &d->timer);
  d->timer.data = owner;
  d->due = d->armed = 0;
  d->expired = expired;
}

/* The deadline is ms from now (0: none). */
static void deadline_set(deadline_t *d, uint32_t ms) {
  if (!ms) {
    d->due = 0;
    return;
  }
  uint64_t due = uv_now(d->timer.loop) + ms;
  d->due = due;
  if (!d->armed || due < d->armed) {
    d->armed = due;
    uv_timer_start(&d->timer, deadline_fire, ms, 0);
  }
}

static void deadline_clear(deadline_t *d) {
  d->due = 0;
}

/* ---- the pool ---- */

static uint32_t backend_hash(const char *host, uint16_t port) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (const unsigned char *s = (const unsigned char *)host; *s; s++)
    h = (h ^ *s) * 16777619u;
  return (h ^ port) * 16777619u;
}

static backend_t *backend_find(const sg_proxy_t *p, const char *host,
                               uint16_t port, uint32_t hash) {
  if (!p->nbuckets)
    return NULL;
  for (backend_t *b = p->backends[hash & (p->nbuckets - 1)]; b; b = b->next)
    if (b->hash == hash && b->port == port && strcmp(b->host, host) == 0)
      return b;
  return NULL;
}

/* Entries without idle connections stay (a busy backend's pool empties and
 * fills all the time) until the table would have to grow: then they go
 * first, and the table grows only if that did not make room. */
static void backends_sweep(sg_proxy_t *p) {
  for (size_t i = 0; i < p->nbuckets; i++)
    for (backend_t **bp = &p->backends[i]; *bp;) {
      backend_t *b = *bp;
      if (b->nidle) {
        bp = &b->next;
        continue;
      }
      *bp = b->next;
      free(b);
      p->nbackends--;
    }
}

static bool backends_grow(sg_proxy_t *p) {
  size_t n = p->nbuckets ? p->nbuckets * 2 : 64;
  backend_t **t = calloc(n, sizeof(*t));
  if (!t)
    return false;
  for (size_t i = 0; i < p->nbuckets; i++)
    for (backend_t *b = p->backends[i], *next; b; b = next) {
      next = b->next;
      b->next = t[b->hash & (n - 1)];
      t[b->hash & (n - 1)] = b;
    }
  free(p->backends);
  p->backends = t;
  p->nbuckets = n;
  return true;
}

/* The backend's pool entry, made when missing; NULL without memory. */
static backend_t *backend_get(sg_proxy_t *p, const char *host, uint16_t port,
                              uint32_t hash) {
  backend_t *b = backend_find(p, host, port, hash);
  if (b)
    return b;
  if (p->nbackends >= p->nbuckets) {
    backends_sweep(p);
    if (p->nbackends >= p->nbuckets / 2 && !backends_grow(p))
      return NULL;
  }
  size_t hl = strlen(host);
  b = malloc(sizeof(*b) + hl + 1);
  if (!b)
    return NULL;
  b->hash = hash;
  b->port = port;
  b->idle = NULL;
  b->nidle = 0;
  memcpy(b->host, host, hl + 1);
  b->next = p->backends[hash & (p->nbuckets - 1)];
  p->backends[hash & (p->nbuckets - 1)] = b;
  p->nbackends++;
  return b;
}

static void pool_put(backend_t *b, upstream_t *u) {
  u->be = b;
  u->prev = NULL;
  u->next = b->idle;
  if (b->idle)
    b->idle->prev = u;
  b->idle = u;
  b->nidle++;
  u->p->pooled++;
}

static void pool_remove(upstream_t *u) {
  backend_t *b = u->be;
  if (u->prev)
    u->prev->next = u->next;
  else
    b->idle = u->next;
  if (u->next)
    u->next->prev = u->prev;
  b->nidle--;
  u->p->pooled--;
  u->be = NULL;
  u->prev = u->next = NULL;
}

static void pool_close_all(sg_proxy_t *p);

static void backends_free(sg_proxy_t *p) {
  for (size_t i = 0; i < p->nbuckets; i++)
    for (backend_t *b = p->backends[i], *next; b; b = next) {
      next = b->next;
      free(b);
    }
  free(p->backends);
  p->backends = NULL;
  p->nbuckets = p->nbackends = 0;
}

/* ---- closing ---- */

static void on_client_closed(uv_handle_t *h) {
  client_t *c = h->data;
  if (--c->handles > 0)
    return;
  sg_proxy_t *p = c->p;
  free(c->buf);
  free(c->head.b);
  free(c->out);
  free(c->pend);
  free(c);
  p->stats.clients_open--;
  p->handles--;
  maybe_done_draining(p);
}

static void upstream_close(upstream_t *u);

static void client_end(client_t *c);

static void client_close(client_t *c) {
  if (c->state == C_CLOSING)
    return;
  c->state = C_CLOSING;
  sg_proxy_t *p = c->p;
  if (c->prev)
    c->prev->next = c->next;
  else
    p->clients = c->next;
  if (c->next)
    c->next->prev = c->prev;
  if (c->up) {
    upstream_t *u = c->up;
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
  }
  sg_resolve_cancel(c->resolving);
  c->resolving = NULL;
  uv_close((uv_handle_t *)&c->tcp, on_client_closed);
  uv_close((uv_handle_t *)&c->dl.timer, on_client_closed);
}

static void on_upstream_closed(uv_handle_t *h) {
  upstream_t *u = h->data;
  if (--u->handles > 0)
    return;
  sg_proxy_t *p = u->p;
  free(u->head.b);
  free(u->head_out);
  free(u);
  p->handles--;
  maybe_done_draining(p);
}

static void upstream_close(upstream_t *u) {
  if (u->state == U_CLOSING)
    return;
  if (u->state == U_IDLE)
    pool_remove(u);
  u->state = U_CLOSING;
  if (u->c) {
    u->c->up = NULL;
    u->c = NULL;
  }
  uv_close((uv_handle_t *)&u->tcp, on_upstream_closed);
  uv_close((uv_handle_t *)&u->dl.timer, on_upstream_closed);
}

static void on_client_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  client_t *c = req->data;
  free(req);
  client_close(c);
}

/* Ends the connection once everything queued for the client is written;
 * the backend connection, if any, closes now. */
static void client_end(client_t *c) {
  if (c->state == C_CLOSING || c->ending)
    return;
  c->ending = 1;
  if (c->up) {
    upstream_t *u = c->up;
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
  }
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = 0;
  deadline_clear(&c->dl);
  uv_shutdown_t *req = malloc(sizeof(*req));
  if (!req) {
    client_close(c);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_client_shutdown)) {
    free(req);
    client_close(c);
  }
}

/* ---- writing ---- */

typedef struct {
  uv_write_t req;
  char data[];
} wreq_t;

static void client_resume_reading(client_t *c);
static void upstream_resume_reading(upstream_t *u);

static void on_client_written(uv_write_t *req, int status) {
  client_t *c = req->handle->data;
  free(container_of(req, wreq_t, req));
  if (status < 0) {
    client_close(c);
    return;
  }
  /* The client took some: the backend may send more. */
  if (c->up && !c->up->reading &&
      uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_HIGH_WATER)
    upstream_resume_reading(c->up);
}

static void on_upstream_written(uv_write_t *req, int status) {
  upstream_t *u = req->handle->data;
  free(container_of(req, wreq_t, req));
  if (status < 0)
    return; /* the read side reports the failure */
  if (u->c && !u->c->reading &&
      uv_stream_get_write_queue_size((uv_stream_t *)&u->tcp) < WRITE_HIGH_WATER)
    client_resume_reading(u->c);
}

/* Queues bytes (copied) on a stream. Returns false on failure. */
static bool send_bytes(uv_stream_t *s, uv_write_cb cb, const char *a, size_t an,
                       const char *b, size_t bn, const char *z, size_t zn) {
  if (uv_is_closing((uv_handle_t *)s))
    return false;
  size_t total = an + bn + zn;
  /* With nothing queued, write at once and copy nothing: the common case
   * (a response that fits the socket buffer) then costs one writev and no
   * write request, whose completion would make libuv re-arm the socket
   * in epoll. Only what the socket did not take is queued. */
  size_t done = 0;
  if (uv_stream_get_write_queue_size(s) == 0) {
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (an)
      bufs[n++] = uv_buf_init((char *)a, (unsigned)an);
    if (bn)
      bufs[n++] = uv_buf_init((char *)b, (unsigned)bn);
    if (zn)
      bufs[n++] = uv_buf_init((char *)z, (unsigned)zn);
    int rc = n ? uv_try_write(s, bufs, n) : 0;
    if (rc < 0 && rc != UV_EAGAIN)
      return false;
    done = rc > 0 ? (size_t)rc : 0;
    if (done == total)
      return true;
  }
  wreq_t *w = malloc(sizeof(*w) + total - done);
  if (!w)
    return false;
  /* The rest, from `done` on, across the three pieces. */
  size_t off = 0;
  const char *piece[3] = {a, b, z};
  size_t len[3] = {an, bn, zn};
  for (int i = 0; i < 3; i++) {
    if (done >= len[i]) {
      done -= len[i];
      continue;
    }
    memcpy(w->data + off, piece[i] + done, len[i] - done);
    off += len[i] - done;
    done = 0;
  }
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)off);
  if (uv_write(&w->req, s, &buf, 1, cb)) {
    free(w);
    return false;
  }
  return true;
}

static bool to_client(client_t *c, const char *d, size_t n) {
  return send_bytes((uv_stream_t *)&c->tcp, on_client_written, d, n, NULL, 0,
                    NULL, 0);
}

static bool to_upstream(upstream_t *u, const char *d, size_t n) {
  return send_bytes((uv_stream_t *)&u->tcp, on_upstream_written, d, n, NULL, 0,
                    NULL, 0);
}

/* A piece of a chunked body: size line, data, CRLF. */
static bool chunk_to(uv_stream_t *s, uv_write_cb cb, const char *d, size_t n) {
  if (n == 0)
    return true;
  char line[24];
  int i = 20;
  size_t v = n;
  do {
    line[--i] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  line[20] = '\r';
  line[21] = '\n';
  return send_bytes(s, cb, line + i, (size_t)(22 - i), d, n, "\r\n", 2);
}

static bool writes_backed_up(uv_stream_t *s) {
  return uv_stream_get_write_queue_size(s) >= WRITE_HIGH_WATER;
}

/* ---- error replies ---- */

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 408: return "Request Timeout";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Error";
  }
}

/* Answers the current request with an error. keep: the connection may go
 * on (the request had no body left unread). */
static void send_reply(client_t *c, int status, const char *ctype,
                       const char *msg, bool keep);

/* An error of the engine itself (or of the route without a content type):
 * text/plain, the prefix, the message, a newline. */
static void send_error(client_t *c, int status, const char *msg, bool keep) {
  if (c->p->o.plain_errors)
    msg = reason(status);
  send_reply(c, status, NULL, msg, keep);
}

static void send_reply(client_t *c, int status, const char *ctype,
                       const char *msg, bool keep) {
  sg_proxy_t *p = c->p;
  if (c->responded) {
    /* A response is already under way: all we can do is cut it. */
    p->stats.aborted++;
    client_close(c);
    return;
  }
  c->responded = 1;
  p->stats.responses_by_class[status / 100 % 6]++;
  if (status == 502)
    p->stats.errors_502++;
  if (status == 504)
    p->stats.errors_504++;
  keep = keep && c->keep_alive && !p->draining;
  sb_t s = {0};
  /* A local answer (GET /status.ok) or one with its own content type is
   * just its text. */
  bool raw = ctype || status < 400;
  const char *prefix = p->o.error_prefix && !raw ? p->o.error_prefix : "";
  const char *nl = raw ? "" : "\n";
  size_t blen = strlen(prefix) + strlen(msg) + strlen(nl);
  sb_fmt(&s,
         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
         "Content-Length: %zu\r\n",
         status, reason(status), ctype ? ctype : "text/plain; charset=utf-8",
         blen);
  if (p->o.powered_by)
    sb_fmt(&s, "Reverse-Proxy-Server-PowerBy: %s\r\n", p->o.powered_by);
  if (status == 503)
    sb_str(&s, "Retry-After: 1\r\n");
  sb_str(&s, keep ? "\r\n" : "Connection: close\r\n\r\n");
  sb_str(&s, prefix);
  sb_str(&s, msg);
  sb_str(&s, nl);
  if (s.oom || !to_client(c, s.b, s.len))
    keep = false;
  free(s.b);
  if (!keep) {
    c->keep_alive = 0;
    client_end(c);
  }
}

/* ---- the backend connection ---- */

static void exchange_done(client_t *c);
static void parse_client(client_t *c);

static void arm_up_timer(upstream_t *u, uint32_t ms);

static void on_up_timeout(uv_timer_t *t) {
  upstream_t *u = t->data;
  client_t *c = u->c;
  if (u->state == U_IDLE || !c) {
    upstream_close(u);
    return;
  }
  if (!c->responded) {
    /* Told apart before the close: it sets the state to U_CLOSING. */
    const char *msg = u->state == U_CONNECTING
                          ? "timed out connecting to the sandbox"
                          : "the sandbox did not answer in time";
    u->c = NULL;
    c->up = NULL;
    upstream_close(u);
    send_error(c, 504, msg, false);
    return;
  }
  c->p->stats.aborted++;
  client_close(c);
}

static void arm_up_timer(upstream_t *u, uint32_t ms) {
  deadline_set(&u->dl, ms);
}

/* Bytes moved on a busy exchange: the idle timeout starts over. */
static void touch_up(upstream_t *u, uint32_t idle_ms) {
  deadline_set(&u->dl, idle_ms);
}

/* Backend reads share one buffer per engine: a read is handled completely
 * (parsed, copied into writes) before the next one. */
static void up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  upstream_t *u = h->data;
  buf->base = u->p->ubuf;
  buf->len = READ_CHUNK;
}

static void start_tunnel(client_t *c, upstream_t *u, const char *rest,
                         size_t rest_len);
static bool head_with(upstream_t *u, client_t *c, const char *a, size_t an,
                      const char *b, size_t bn);

/* Retries the request on a fresh connection (a pooled one went away before
 * answering). Returns true when a retry is under way. */
static bool retry(client_t *c);

static void on_up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  upstream_t *u = s->data;
  client_t *c = u->c;
  if (n == 0) {
    return;
  }
  if (u->state == U_IDLE) {
    /* A pooled connection said something or closed: it is done. */
    upstream_close(u);
    return;
  }
  if (n < 0) {
    if (!c) {
      upstream_close(u);
      return;
    }
    if (u->state == U_TUNNEL) {
      /* The backend ended the tunnel: pass the end on. */
      client_end(c);
      return;
    }
    if (n == UV_EOF && u->got_bytes && llhttp_message_needs_eof(&u->parser)) {
      llhttp_finish(&u->parser);
      if (u->done && u->c) {
        u->done = 0;
        u->close_after = 1;
        exchange_done(u->c);
      }
      return;
    }
    if (!u->got_bytes && u->reused && retry(c))
      return;
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
    if (!c->responded)
      send_error(c, 502, "the sandbox closed the connection", false);
    else {
      c->p->stats.aborted++;
      client_close(c);
    }
    return;
  }
  if (!c) {
    upstream_close(u);
    return;
  }
  touch_up(u, c->p->o.idle_timeout_ms);
  if (u->state == U_TUNNEL) {
    to_client(c, buf->base, (size_t)n);
    if (writes_backed_up((uv_stream_t *)&c->tcp)) {
      uv_read_stop(s);
      u->reading = 0;
    }
    return;
  }
  u->got_bytes = 1;
  llhttp_errno_t err = llhttp_execute(&u->parser, buf->base, (size_t)n);
  if (u->done && u->c) {
    u->done = 0;
    exchange_done(u->c);
    return;
  }
  if (err == HPE_PAUSED_UPGRADE && u->c) {
    const char *pos = llhttp_get_error_pos(&u->parser);
    size_t used = pos ? (size_t)(pos - buf->base) : (size_t)n;
    start_tunnel(u->c, u, buf->base + used, (size_t)n - used);
  } else if (err != HPE_OK && err != HPE_PAUSED && u->c) {
    client_t *cc = u->c;
    cc->up = NULL;
    u->c = NULL;
    upstream_close(u);
    if (!cc->responded)
      send_error(cc, 502, "the sandbox sent an invalid HTTP response", false);
    else
      client_close(cc);
  }
  /* A head whose body did not come in the same read goes out alone: an
   * event stream's client must see it before the first event. */
  if (u->c && u->head_out)
    head_with(u, u->c, NULL, 0, NULL, 0);
  if (u->c && u->state == U_BUSY && writes_backed_up((uv_stream_t *)&c->tcp)) {
    uv_read_stop(s);
    u->reading = 0;
  }
}

static void upstream_resume_reading(upstream_t *u) {
  if (u->reading || u->state == U_CLOSING)
    return;
  if (uv_read_start((uv_stream_t *)&u->tcp, up_alloc, on_up_read) == 0)
    u->reading = 1;
}

/* Response parser callbacks: u is parser->data. */

static int r_begin(llhttp_t *hp) {
  upstream_t *u = hp->data;
  head_reset(&u->head);
  return 0;
}

static int r_status(llhttp_t *hp, const char *at, size_t n) {
  upstream_t *u = hp->data;
  return head_line(&u->head, u->p->o.max_header_bytes, at, n);
}

static int r_field(llhttp_t *hp, const char *at, size_t n) {
  upstream_t *u = hp->data;
  return head_field(&u->head, u->p->o.max_header_bytes, at, n);
}

static int r_value(llhttp_t *hp, const char *at, size_t n) {
  upstream_t *u = hp->data;
  return head_value(&u->head, u->p->o.max_header_bytes, at, n);
}

static int r_headers_complete(llhttp_t *hp) {
  upstream_t *u = hp->data;
  client_t *c = u->c;
  if (!c)
    return -1;
  sg_proxy_t *p = u->p;
  int status = llhttp_get_status_code(hp);
  head_t *h = &u->head;
  bool informational = status >= 100 && status < 200;
  bool switching = status == 101 && c->upgrade;
  bool no_body = c->is_head || status == 204 || status == 304 ||
                 (informational && !switching);
  head_classify(h);
  bool has_len = h->first[K_CLEN] >= 0;
  bool chunked_in = (hp->flags & F_CHUNKED) != 0;
  sb_t s;
  sb_take(p, &s);
  sb_add(&s, "HTTP/1.1 ", 9);
  sb_num(&s, (unsigned long)status, 10);
  sb_add(&s, " ", 1);
  sb_add(&s, h->b + h->url, h->url_len);
  sb_add(&s, "\r\n", 2);
  for (size_t i = 0; i < h->nh; i++) {
    const hdr_t *x = &h->h[i];
    if (is_hop(h, i) || (chunked_in && h->kind[i] == K_CLEN))
      continue;
    sb_header(&s, h->b + x->n, x->nl, h->b + x->v, x->vl);
  }
  if (p->o.powered_by && !informational) {
    sb_add(&s, "Reverse-Proxy-Server-PowerBy: ", 30);
    sb_str(&s, p->o.powered_by);
    sb_add(&s, "\r\n", 2);
  }
  u->chunk_out = 0;
  u->close_after = 0;
  if (switching) {
    size_t ul = 0;
    const char *up = head_kind(h, K_UPGRADE, &ul);
    sb_str(&s, "Connection: Upgrade\r\n");
    if (up) {
      sb_str(&s, "Upgrade: ");
      sb_add(&s, up, ul);
      sb_str(&s, "\r\n");
    }
  } else if (!informational) {
    if (!no_body && (chunked_in || !has_len)) {
      if (c->http10)
        u->close_after = 1; /* the end of the body is the end of it all */
      else {
        sb_str(&s, "Transfer-Encoding: chunked\r\n");
        u->chunk_out = 1;
      }
    }
    if (!c->keep_alive || !c->req_done || p->draining || u->close_after) {
      /* The request is not fully read, or the client wants to end: the
       * connection ends with this response. */
      if (!c->req_done)
        c->keep_alive = 0;
      sb_str(&s, "Connection: close\r\n");
      u->close_after = 1;
    } else if (c->http10) {
      sb_str(&s, "Connection: keep-alive\r\n");
    }
  }
  sb_str(&s, "\r\n");
  if (!informational) {
    c->responded = 1;
    p->stats.responses_by_class[status / 100 % 6]++;
  }
  if (s.oom) {
    free(s.b);
    return -1;
  }
  if (informational || switching || no_body) {
    bool ok = to_client(c, s.b, s.len);
    spare_give(p, s.b, s.cap);
    if (!ok)
      return -1;
    if (switching)
      return 2; /* no body; the rest is the tunnel */
    return no_body ? 1 : 0;
  }
  spare_give(p, u->head_out, u->head_out_cap);
  u->head_out = s.b;
  u->head_out_len = s.len;
  u->head_out_cap = s.cap;
  return 0;
}

/* The held response head goes out now, with `a` and `b` after it. */
static bool head_with(upstream_t *u, client_t *c, const char *a, size_t an,
                      const char *b, size_t bn) {
  bool ok = send_bytes((uv_stream_t *)&c->tcp, on_client_written, u->head_out,
                       u->head_out_len, a, an, b, bn);
  spare_give(u->p, u->head_out, u->head_out_cap);
  u->head_out = NULL;
  u->head_out_len = u->head_out_cap = 0;
  return ok;
}

static int r_body(llhttp_t *hp, const char *at, size_t n) {
  upstream_t *u = hp->data;
  client_t *c = u->c;
  if (!c)
    return -1;
  bool ok;
  if (u->head_out && !u->chunk_out) {
    ok = head_with(u, c, at, n, NULL, 0);
  } else {
    if (u->head_out && !head_with(u, c, NULL, 0, NULL, 0))
      return -1;
    ok = u->chunk_out
             ? chunk_to((uv_stream_t *)&c->tcp, on_client_written, at, n)
             : to_client(c, at, n);
  }
  return ok ? 0 : -1;
}

static int r_message_complete(llhttp_t *hp) {
  upstream_t *u = hp->data;
  client_t *c = u->c;
  if (!c)
    return -1;
  int status = llhttp_get_status_code(hp);
  if (status >= 100 && status < 200) {
    if (status == 101 && c->upgrade)
      return 0; /* llhttp stops with HPE_PAUSED_UPGRADE */
    head_reset(&u->head);
    return 0; /* an interim response; the real one follows */
  }
  if (u->head_out)
    head_with(u, c, u->chunk_out ? "0\r\n\r\n" : NULL, u->chunk_out ? 5 : 0,
              NULL, 0);
  else if (u->chunk_out)
    to_client(c, "0\r\n\r\n", 5);
  /* Finished outside the parser: the connection may be reused at once. */
  u->done = 1;
  return HPE_PAUSED;
}

static void on_client_timeout(uv_timer_t *t);

/* The response is complete: the backend connection goes back to the pool
 * (or closes), and the client goes on with its next request. */
static void exchange_done(client_t *c) {
  sg_proxy_t *p = c->p;
  upstream_t *u = c->up;
  bool client_keeps =
      c->keep_alive && c->req_done && !p->draining && !(u && u->close_after);
  if (u) {
    c->up = NULL;
    u->c = NULL;
    bool reusable = c->req_done && llhttp_should_keep_alive(&u->parser) &&
                    !p->draining && p->pooled < p->o.pool_max_per_backend * 64;
    backend_t *b = reusable ? backend_get(p, u->host, u->port, u->hash) : NULL;
    if (b && b->nidle < p->o.pool_max_per_backend) {
      u->state = U_IDLE;
      u->reused = 0;
      pool_put(b, u);
      arm_up_timer(u, p->o.pool_idle_ms);
      upstream_resume_reading(u);
    } else {
      upstream_close(u);
    }
  }
  spare_give(p, c->out, c->out_cap);
  c->out = NULL;
  c->out_len = c->out_cap = 0;
  if (!client_keeps) {
    client_end(c);
    return;
  }
  /* Next request, possibly already buffered (pipelining). */
  c->state = C_HEAD;
  c->responded = 0;
  c->retried = 0;
  c->pend_len = 0;
  head_reset(&c->head);
  /* Idle until the next request's first byte (q_begin sets the head
   * deadline). */
  deadline_set(&c->dl, p->o.keepalive_ms ? p->o.keepalive_ms : 60000);
  client_resume_reading(c);
  parse_client(c);
}

/* ---- connecting ---- */

static void on_connected(uv_connect_t *req, int status);

static void send_request(client_t *c, upstream_t *u) {
  sg_proxy_t *p = c->p;
  u->state = U_BUSY;
  u->c = c;
  u->got_bytes = 0;
  c->up = u;
  llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
  u->parser.data = u;
  head_reset(&u->head);
  if (!to_upstream(u, c->out, c->out_len)) {
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
    send_error(c, 502, "cannot write to the sandbox", false);
    return;
  }
  if (c->pend_len) {
    to_upstream(u, c->pend, c->pend_len);
    c->pend_len = 0;
  }
  arm_up_timer(u, p->o.first_byte_timeout_ms);
  upstream_resume_reading(u);
  /* The client may have been held back while the body waited. */
  client_resume_reading(c);
}

static void on_resolved(void *arg, int status,
                        const struct sockaddr_storage *addr);
static void resolve_failed(client_t *c, int status);
static void connect_addr(client_t *c, const struct sockaddr_storage *addr);

/* A pooled connection to the backend, or a new one. */
static void connect_backend(client_t *c) {
  sg_proxy_t *p = c->p;
  c->up_hash = backend_hash(c->up_host, c->up_port);
  if (!c->retried) {
    backend_t *b = backend_find(p, c->up_host, c->up_port, c->up_hash);
    if (b && b->idle) {
      upstream_t *u = b->idle;
      pool_remove(u);
      u->reused = 1;
      p->stats.upstream_reused++;
      send_request(c, u);
      return;
    }
  }
  struct sockaddr_storage ss;
  int rc = sg_resolve(p->resolver, c->up_host, c->up_port, &ss, on_resolved, c,
                      &c->resolving);
  if (rc == 1)
    return; /* on_resolved goes on */
  if (rc < 0) {
    resolve_failed(c, rc);
    return;
  }
  connect_addr(c, &ss);
}

/* A name that does not exist (NXDOMAIN, or no address) is a sandbox that
 * does not exist, as an unknown id in the routes file is: 404. Any other
 * failure (SERVFAIL, no answer) is the backend being unreachable: 502. */
static void resolve_failed(client_t *c, int status) {
  char msg[512];
  if (status == UV_EAI_NONAME && c->sandbox[0]) {
    snprintf(msg, sizeof(msg), "sandbox not found: %s (%s does not resolve)",
             c->sandbox, c->up_host);
    send_error(c, 404, msg, false);
    return;
  }
  snprintf(msg, sizeof(msg), "cannot resolve the sandbox address %s (%s)",
           c->up_host, uv_strerror(status));
  send_error(c, 502, msg, false);
}

static void on_resolved(void *arg, int status,
                        const struct sockaddr_storage *addr) {
  client_t *c = arg;
  c->resolving = NULL;
  if (status < 0) {
    resolve_failed(c, status);
    return;
  }
  connect_addr(c, addr);
}

static void connect_addr(client_t *c, const struct sockaddr_storage *addr) {
  sg_proxy_t *p = c->p;
  struct sockaddr_storage ss = *addr;
  upstream_t *u = calloc(1, sizeof(*u));
  if (!u) {
    send_error(c, 502, "out of memory", false);
    return;
  }
  u->p = p;
  u->state = U_CONNECTING;
  memcpy(u->host, c->up_host, sizeof(u->host));
  u->port = c->up_port;
  u->hash = c->up_hash;
  uv_tcp_init(p->loop, &u->tcp);
  deadline_init(p->loop, &u->dl, u, on_up_timeout);
  u->tcp.data = u->connect.data = u;
  u->handles = 2;
  p->handles++;
  uv_tcp_nodelay(&u->tcp, 1);
  u->c = c;
  c->up = u;
  p->stats.upstream_connects++;
  arm_up_timer(u, p->o.connect_timeout_ms);
  if (uv_tcp_connect(&u->connect, &u->tcp, (struct sockaddr *)&ss,
                     on_connected)) {
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
    send_error(c, 502, "cannot connect to the sandbox", false);
  }
}

static void on_connected(uv_connect_t *req, int status) {
  upstream_t *u = req->data;
  if (u->state == U_CLOSING)
    return;
  client_t *c = u->c;
  if (!c) {
    upstream_close(u);
    return;
  }
  if (status < 0) {
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
    char msg[160];
    snprintf(msg, sizeof(msg), "cannot connect to the sandbox (%s)",
             uv_strerror(status));
    send_error(c, 502, msg, false);
    return;
  }
  send_request(c, u);
}

static bool idempotent(const client_t *c) {
  uint8_t m = llhttp_get_method((llhttp_t *)&c->parser);
  return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS ||
         m == HTTP_PUT || m == HTTP_DELETE || m == HTTP_TRACE;
}

static bool retry(client_t *c) {
  if (c->retried || c->responded || !idempotent(c) || c->req_has_body ||
      !c->out)
    return false;
  upstream_t *u = c->up;
  if (u) {
    c->up = NULL;
    u->c = NULL;
    upstream_close(u);
  }
  c->retried = 1;
  c->p->stats.upstream_retries++;
  connect_backend(c);
  return true;
}

/* ---- the tunnel ---- */

static void start_tunnel(client_t *c, upstream_t *u, const char *rest,
                         size_t rest_len) {
  sg_proxy_t *p = c->p;
  u->state = U_TUNNEL;
  c->state = C_TUNNEL;
  p->stats.tunnels++;
  p->stats.tunnels_open++;
  touch_up(u, p->o.idle_timeout_ms);
  /* Bytes the backend sent right after its 101. */
  if (rest_len)
    to_client(c, rest, rest_len);
  /* Bytes the client sent after its request. */
  if (c->off < c->len) {
    to_upstream(u, c->in + c->off, c->len - c->off);
    c->off = c->len = 0;
  }
  client_resume_reading(c);
}

/* ---- the client side ---- */

bool sg_proxy_trusted(const sg_ipset_t *trusted, const char *ip) {
  return sg_ipset_has_ip(trusted, ip);
}

/* Whether the route removes or replaces a client's header. */
static bool route_drops(const sg_proxy_route_t *rt, const char *name,
                        size_t nl) {
  for (int i = 0; i < rt->nremove; i++)
    if (name_eq(name, nl, rt->remove[i]))
      return true;
  for (int i = 0; i < rt->nset; i++)
    if (name_eq(name, nl, rt->set_name[i]))
      return true;
  return false;
}

static void emit_str(sg_proxy_header_cb emit, void *ctx, const char *name,
                     const char *value) {
  emit(ctx, name, strlen(name), value, strlen(value));
}

void sg_proxy_forward_headers(const sg_proxy_request_t *req,
                              const sg_proxy_route_t *rt, bool trusted,
                              bool chunked, bool upgrade,
                              sg_proxy_header_cb emit, void *ctx) {
  /* Each header classified once (no name scans per lookup: this runs for
   * every proxied request). */
  uint8_t kind[MAX_HEADERS];
  int first[9];
  for (int k = 0; k < 9; k++)
    first[k] = -1;
  size_t n = req->nheaders < MAX_HEADERS ? req->nheaders : MAX_HEADERS;
  for (size_t i = 0; i < n; i++) {
    kind[i] = kind_of(req->headers[i].name, req->headers[i].name_len);
    if (first[kind[i]] < 0)
      first[kind[i]] = (int)i;
  }
  const sg_proxy_header_t *conn =
      first[K_CONN] >= 0 ? &req->headers[first[K_CONN]] : NULL;
  if (conn && !conn_names_others(conn->value, conn->value_len))
    conn = NULL; /* names no header that is not dropped anyway */
#define FIRST(k) (first[k] >= 0 ? &req->headers[first[k]] : NULL)
  const sg_proxy_header_t *host = FIRST(K_HOST), *xfp = FIRST(K_XFP),
                          *xfh = FIRST(K_XFH), *up = FIRST(K_UPGRADE);
#undef FIRST
  if (rt->keep_host && host) {
    emit(ctx, "Host", 4, host->value, host->value_len);
  } else {
    /* host:port, [host]:port for an IPv6 literal */
    char hp[sizeof(rt->host) + 32];
    size_t hl = strlen(rt->host), hn = 0;
    bool v6 = memchr(rt->host, ':', hl) != NULL;
    if (v6)
      hp[hn++] = '[';
    memcpy(hp + hn, rt->host, hl);
    hn += hl;
    if (v6)
      hp[hn++] = ']';
    hp[hn++] = ':';
    hn += fmt_num(hp + hn, rt->port, 10);
    emit(ctx, "Host", 4, hp, hn);
  }
  for (size_t i = 0; i < n; i++) {
    const sg_proxy_header_t *x = &req->headers[i];
    uint8_t k = kind[i];
    if (k == K_HOP || k == K_UPGRADE || k == K_CONN || k == K_HOST ||
        k == K_XFF || k == K_XFP || k == K_XFH ||
        (conn && sg_proxy_list_has(conn->value, conn->value_len, x->name,
                                   x->name_len)) ||
        route_drops(rt, x->name, x->name_len))
      continue;
    emit(ctx, x->name, x->name_len, x->value, x->value_len);
  }
  /* The client's X-Forwarded-* count only from a trusted proxy; anyone else
   * could claim any address. A trusted proxy's X-Forwarded-For lines are
   * all kept, in order. */
  if (trusted && first[K_XFF] >= 0) {
    sb_t xff = {0};
    for (size_t i = 0; i < n; i++)
      if (kind[i] == K_XFF && req->headers[i].value_len) {
        sb_add(&xff, req->headers[i].value, req->headers[i].value_len);
        sb_add(&xff, ", ", 2);
      }
    sb_str(&xff, req->client_ip);
    if (!xff.oom)
      emit(ctx, "X-Forwarded-For", 15, xff.b, xff.len);
    free(xff.b);
  } else {
    emit_str(emit, ctx, "X-Forwarded-For", req->client_ip);
  }
  if (trusted && xfp)
    emit(ctx, "X-Forwarded-Proto", 17, xfp->value, xfp->value_len);
  else
    emit(ctx, "X-Forwarded-Proto", 17, "http", 4);
  if (trusted && xfh)
    emit(ctx, "X-Forwarded-Host", 16, xfh->value, xfh->value_len);
  else if (host)
    emit(ctx, "X-Forwarded-Host", 16, host->value, host->value_len);
  for (int i = 0; i < rt->nset; i++)
    emit_str(emit, ctx, rt->set_name[i], rt->set_value[i]);
  if (chunked)
    emit(ctx, "Transfer-Encoding", 17, "chunked", 7);
  if (upgrade) {
    emit(ctx, "Connection", 10, "Upgrade", 7);
    emit(ctx, "Upgrade", 7, up ? up->value : "", up ? up->value_len : 0);
  }
}

void sg_proxy_route(sg_proxy_route_cb route, void *ctx,
                    const sg_proxy_request_t *req, sg_proxy_route_t *rt) {
  rt->status = 500;
  rt->message[0] = 0;
  rt->content_type[0] = 0;
  rt->host[0] = 0;
  rt->path[0] = 0;
  rt->port = 0;
  rt->keep_host = 0;
  rt->nset = rt->nremove = 0;
  rt->sandbox[0] = 0;
  int hosts = 0;
  for (size_t i = 0; i < req->nheaders; i++)
    hosts += name_eq(req->headers[i].name, req->headers[i].name_len, "host");
  if (hosts > 1) {
    rt->status = 400;
    snprintf(rt->message, sizeof(rt->message), "more than one Host header");
    return;
  }
  route(ctx, req, rt);
}

static void add_header(void *ctx, const char *name, size_t nl,
                       const char *value, size_t vl) {
  sb_header(ctx, name, nl, value, vl);
}

/* The request head for the backend, from the client's request and the
 * route. */
static bool build_request(client_t *c, const sg_proxy_request_t *req,
                          const sg_proxy_route_t *rt) {
  sb_t s;
  sb_take(c->p, &s);
  sb_str(&s, req->method);
  sb_add(&s, " ", 1);
  sb_str(&s, rt->path);
  sb_add(&s, " HTTP/1.1\r\n", 11);
  sg_proxy_forward_headers(req, rt, c->trusted, c->req_chunked, c->upgrade,
                           add_header, &s);
  sb_str(&s, "\r\n");
  if (s.oom) {
    free(s.b);
    return false;
  }
  spare_give(c->p, c->out, c->out_cap);
  c->out = s.b;
  c->out_len = s.len;
  c->out_cap = s.cap;
  return true;
}

/* The head of a request is complete: ask the route, then connect. */
static int q_headers_complete(llhttp_t *hp) {
  client_t *c = hp->data;
  sg_proxy_t *p = c->p;
  deadline_clear(&c->dl);
  p->stats.requests++;
  head_t *h = &c->head;
  c->http10 = hp->http_major == 1 && hp->http_minor == 0;
  c->keep_alive = llhttp_should_keep_alive(hp);
  c->req_chunked = (hp->flags & F_CHUNKED) != 0;
  c->req_has_body =
      c->req_chunked || ((hp->flags & F_CONTENT_LENGTH) && hp->content_length);
  c->req_done = 0;
  c->is_head = hp->method == HTTP_HEAD;
  c->upgrade = hp->upgrade;
  c->state = C_ROUTED;

  sg_proxy_header_t hdrs[MAX_HEADERS];
  for (size_t i = 0; i < h->nh; i++) {
    hdr_t *x = &h->h[i];
    /* Values without trailing whitespace (llhttp drops the leading). */
    while (x->vl &&
           (h->b[x->v + x->vl - 1] == ' ' || h->b[x->v + x->vl - 1] == '\t'))
      x->vl--;
    hdrs[i] = (sg_proxy_header_t){h->b + x->n, h->b + x->v, x->nl, x->vl};
  }
  /* An absolute-form target (a client talking to us as to a proxy) is
   * routed by its path, like the origin form. */
  const char *target = h->b + h->url;
  size_t target_len = h->url_len;
  if ((target_len > 7 && strncasecmp(target, "http://", 7) == 0) ||
      (target_len > 8 && strncasecmp(target, "https://", 8) == 0)) {
    const char *rest = memchr(target, ':', target_len) + 3;
    const char *slash = memchr(rest, '/', target_len - (size_t)(rest - target));
    if (slash) {
      target_len -= (size_t)(slash - target);
      target = slash;
    } else {
      target = "/";
      target_len = 1;
    }
  }
  sg_proxy_request_t req = {
      .method = llhttp_method_name((llhttp_method_t)hp->method),
      .target = target,
      .target_len = target_len,
      .client_ip = c->ip,
      .headers = hdrs,
      .nheaders = h->nh,
  };
  sg_proxy_route_t *rt = &p->route;
  sg_proxy_route(p->o.route, p->o.route_ctx, &req, rt);
  /* The body (if any) is read on: to the backend once it is connected,
   * buffered until then (with backpressure), dropped after an error. */
  c->state = C_BODY;
  if (rt->status != 0) {
    /* Without a body left to read, the connection can go on. */
    send_reply(c, rt->status, rt->content_type[0] ? rt->content_type : NULL,
               rt->message[0] ? rt->message : "error",
               !c->req_has_body && !c->upgrade);
    return c->state == C_CLOSING || c->ending ? HPE_PAUSED : 0;
  }
  memcpy(c->up_host, rt->host, sizeof(c->up_host)); /* both NUL-ended */
  size_t sl = strnlen(rt->sandbox, sizeof(c->sandbox) - 1);
  memcpy(c->sandbox, rt->sandbox, sl);
  c->sandbox[sl] = 0;
  c->up_port = rt->port;
  if (!build_request(c, &req, rt)) {
    send_error(c, 502, "out of memory", false);
    return HPE_PAUSED;
  }
  connect_backend(c);
  return c->state == C_CLOSING || c->ending ? HPE_PAUSED : 0;
}

/* Body bytes for the backend: sent now when its connection is ready, kept
 * until then. */
static bool body_out(client_t *c, const char *a, size_t an, const char *b,
                     size_t bn, const char *z, size_t zn) {
  upstream_t *u = c->up;
  if (c->responded && !u)
    return true; /* answered already (an error): the body is dropped */
  if (u && u->state == U_BUSY)
    return send_bytes((uv_stream_t *)&u->tcp, on_upstream_written, a, an, b, bn,
                      z, zn);
  if (!grow(&c->pend, &c->pend_cap, c->pend_len + an + bn + zn))
    return false;
  memcpy(c->pend + c->pend_len, a, an);
  if (bn)
    memcpy(c->pend + c->pend_len + an, b, bn);
  if (zn)
    memcpy(c->pend + c->pend_len + an + bn, z, zn);
  c->pend_len += an + bn + zn;
  return true;
}

static int q_begin(llhttp_t *hp) {
  client_t *c = hp->data;
  head_reset(&c->head);
  if (c->p->o.header_timeout_ms)
    deadline_set(&c->dl, c->p->o.header_timeout_ms);
  return 0;
}

static int q_url(llhttp_t *hp, const char *at, size_t n) {
  client_t *c = hp->data;
  return head_line(&c->head, c->p->o.max_header_bytes, at, n);
}

static int q_field(llhttp_t *hp, const char *at, size_t n) {
  client_t *c = hp->data;
  return head_field(&c->head, c->p->o.max_header_bytes, at, n);
}

static int q_value(llhttp_t *hp, const char *at, size_t n) {
  client_t *c = hp->data;
  return head_value(&c->head, c->p->o.max_header_bytes, at, n);
}

static int q_body(llhttp_t *hp, const char *at, size_t n) {
  client_t *c = hp->data;
  if (n == 0)
    return 0;
  bool ok;
  if (c->req_chunked) {
    char line[24];
    int ln = snprintf(line, sizeof(line), "%zx\r\n", n);
    ok = body_out(c, line, (size_t)ln, at, n, "\r\n", 2);
  } else {
    ok = body_out(c, at, n, NULL, 0, NULL, 0);
  }
  return ok ? 0 : -1;
}

static int q_message_complete(llhttp_t *hp) {
  client_t *c = hp->data;
  c->req_done = 1;
  if (c->req_chunked && !body_out(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0))
    return -1;
  if (c->state == C_BODY)
    c->state = C_WAIT;
  /* A pipelined next request waits until this response is done. */
  return HPE_PAUSED;
}

static void parse_client(client_t *c) {
  while (c->off < c->len && (c->state == C_HEAD || c->state == C_BODY) &&
         !c->ending) {
    if (llhttp_get_errno(&c->parser) == HPE_PAUSED)
      llhttp_resume(&c->parser);
    const char *start = c->in + c->off;
    llhttp_errno_t err = llhttp_execute(&c->parser, start, c->len - c->off);
    if (err == HPE_OK) {
      c->off = c->len;
      break;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      const char *pos = llhttp_get_error_pos(&c->parser);
      c->off = pos ? (size_t)(pos - c->in) : c->len;
      if (err == HPE_PAUSED_UPGRADE) {
        c->req_done = 1;
        if (c->state == C_BODY)
          c->state = C_WAIT;
      }
      if (c->state == C_CLOSING)
        return;
      /* An error reply went out and the request is read: go on. */
      if (c->state == C_WAIT && c->responded && !c->up && c->req_done) {
        exchange_done(c);
        return;
      }
      break;
    }
    /* A broken request. */
    if (c->head.too_big)
      send_error(c, 431, "request headers too large", false);
    else {
      char msg[160];
      snprintf(msg, sizeof(msg), "malformed HTTP request (%s)",
               llhttp_get_error_reason(&c->parser));
      send_error(c, 400, msg, false);
    }
    return;
  }
}

static void on_client_timeout(uv_timer_t *t) {
  client_t *c = t->data;
  /* Slowloris, or an idle keep-alive connection. */
  if (c->state == C_HEAD)
    client_close(c);
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  client_t *c = h->data;
  if (c->off == c->len) {
    /* Nothing left over: read into the shared buffer, so an idle
     * connection holds no read buffer of its own. */
    c->off = c->len = 0;
    c->shared = 1;
    buf->base = c->p->rbuf;
    buf->len = READ_CHUNK;
    return;
  }
  c->shared = 0;
  if (!grow(&c->buf, &c->cap, c->len + READ_CHUNK)) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  c->in = c->buf;
  buf->base = c->buf + c->len;
  buf->len = READ_CHUNK;
}

/* After a read: what the parser left goes into the connection's own
 * buffer, since the shared one is the next read's. */
static void keep_leftover(client_t *c) {
  size_t left = c->len - c->off;
  if (left == 0) {
    c->off = c->len = 0;
    c->in = c->buf;
    if (c->cap > 16384) {
      free(c->buf);
      c->buf = NULL;
      c->cap = 0;
      c->in = NULL;
    }
    return;
  }
  if (c->in != c->buf || c->off > 0) {
    if (c->in == c->buf) {
      memmove(c->buf, c->buf + c->off, left);
    } else if (grow(&c->buf, &c->cap, left)) {
      memcpy(c->buf, c->in + c->off, left);
    } else {
      client_close(c);
      return;
    }
  }
  c->in = c->buf;
  c->off = 0;
  c->len = left;
}

static void on_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  client_t *c = s->data;
  if (n == 0)
    return;
  if (n < 0) {
    if (c->state == C_TUNNEL && c->up) {
      /* The client ended the tunnel: the backend's side ends too. */
      upstream_close(c->up);
    }
    client_close(c);
    return;
  }
  if (c->shared) {
    c->in = c->p->rbuf;
    c->off = 0;
    c->len = (size_t)n;
  } else {
    c->len += (size_t)n;
  }
  if (c->state == C_TUNNEL) {
    if (c->up)
      to_upstream(c->up, c->in + c->off, c->len - c->off);
    c->off = c->len = 0;
    if (c->up) {
      touch_up(c->up, c->p->o.idle_timeout_ms);
      if (writes_backed_up((uv_stream_t *)&c->up->tcp)) {
        uv_read_stop(s);
        c->reading = 0;
      }
    }
    return;
  }
  if (c->state == C_HEAD && c->p->o.header_timeout_ms && !c->dl.due)
    deadline_set(&c->dl, c->p->o.header_timeout_ms);
  parse_client(c);
  if (c->state == C_CLOSING)
    return;
  keep_leftover(c);
  if (c->state == C_CLOSING)
    return;
  /* Hold back while the backend is slow to take the body, or while a
   * head waits for its backend. */
  if ((c->up && writes_backed_up((uv_stream_t *)&c->up->tcp)) ||
      c->len - c->off > WRITE_HIGH_WATER || c->pend_len > WRITE_HIGH_WATER) {
    uv_read_stop(s);
    c->reading = 0;
  }
}

static void client_resume_reading(client_t *c) {
  if (c->reading || c->state == C_CLOSING || c->ending)
    return;
  if (uv_read_start((uv_stream_t *)&c->tcp, client_alloc, on_client_read) == 0)
    c->reading = 1;
}

static void on_connection(uv_stream_t *server, int status) {
  sg_proxy_t *p = server->data;
  if (status < 0)
    return;
  client_t *c = calloc(1, sizeof(*c));
  if (!c)
    return;
  c->p = p;
  uv_tcp_init(p->loop, &c->tcp);
  deadline_init(p->loop, &c->dl, c, on_client_timeout);
  c->tcp.data = c;
  c->handles = 2;
  p->handles++;
  p->stats.clients_open++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    uv_close((uv_handle_t *)&c->dl.timer, on_client_closed);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
    sg_sockaddr_ip((struct sockaddr *)&ss, c->ip, sizeof(c->ip));
  c->trusted = sg_proxy_trusted(p->o.trusted, c->ip);
  llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
  c->parser.data = c;
  c->next = p->clients;
  if (p->clients)
    p->clients->prev = c;
  p->clients = c;
  c->state = C_HEAD;
  deadline_set(&c->dl, p->o.header_timeout_ms ? p->o.header_timeout_ms
                                              : p->o.keepalive_ms);
  client_resume_reading(c);
}

/* ---- start and drain ---- */

static void init_settings(void) {
  llhttp_settings_init(&req_settings);
  req_settings.on_message_begin = q_begin;
  req_settings.on_url = q_url;
  req_settings.on_header_field = q_field;
  req_settings.on_header_value = q_value;
  req_settings.on_headers_complete = q_headers_complete;
  req_settings.on_body = q_body;
  req_settings.on_message_complete = q_message_complete;
  llhttp_settings_init(&resp_settings);
  resp_settings.on_message_begin = r_begin;
  resp_settings.on_status = r_status;
  resp_settings.on_header_field = r_field;
  resp_settings.on_header_value = r_value;
  resp_settings.on_headers_complete = r_headers_complete;
  resp_settings.on_body = r_body;
  resp_settings.on_message_complete = r_message_complete;
}

int sg_proxy_start(uv_loop_t *loop, const sg_proxy_opts_t *opts,
                   sg_proxy_t **out, char *err, size_t errlen) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, init_settings);
  if (errlen)
    err[0] = 0;
  sg_proxy_t *p = calloc(1, sizeof(*p));
  if (!p) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  p->loop = loop;
  p->o = *opts;
  p->rbuf = malloc(READ_CHUNK);
  p->ubuf = malloc(READ_CHUNK);
  if (!p->rbuf || !p->ubuf ||
      sg_resolver_new(loop, &p->resolver, err, errlen)) {
    free(p->rbuf);
    free(p->ubuf);
    free(p);
    if (!*err)
      snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  if (!p->o.max_header_bytes)
    p->o.max_header_bytes = 64 * 1024;
  if (!p->o.pool_max_per_backend)
    p->o.pool_max_per_backend = 16;
  uv_tcp_init(loop, &p->listener);
  p->listener.data = p;
  p->handles = 1;
  int rc = 0;
  char a[SG_ADDRSTR_MAX];
  sg_sockaddr_str((struct sockaddr *)&opts->listen, a, sizeof(a));
  if (opts->reuseport) {
    /* Several workers share the port: the socket needs the option before
     * bind, so it is made here and handed to libuv. */
    int fd = socket(opts->listen.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        uv_tcp_open(&p->listener, fd))
      rc = -errno;
  }
  if (!rc)
    rc = uv_tcp_bind(&p->listener, (struct sockaddr *)&opts->listen, 0);
  if (!rc)
    rc = uv_listen((uv_stream_t *)&p->listener, 1024, on_connection);
  if (rc) {
    snprintf(err, errlen, "cannot listen on %s: %s", a, uv_strerror(rc));
    uv_close((uv_handle_t *)&p->listener, NULL);
    sg_resolver_close(p->resolver);
    uv_run(loop, UV_RUN_NOWAIT);
    free(p->rbuf);
    free(p->ubuf);
    free(p);
    return rc;
  }
  p->listening = 1;
  *out = p;
  return 0;
}

const sg_proxy_stats_t *sg_proxy_stats(const sg_proxy_t *p) {
  return &p->stats;
}

static void on_listener_closed(uv_handle_t *h) {
  sg_proxy_t *p = h->data;
  p->handles--;
  maybe_done_draining(p);
}

static void on_drain_timer_closed(uv_handle_t *h) {
  sg_proxy_t *p = h->data;
  p->handles--;
  maybe_done_draining(p);
}

static void maybe_done_draining(sg_proxy_t *p) {
  if (!p->draining)
    return;
  if (p->handles == 1 && !uv_is_closing((uv_handle_t *)&p->drain_timer)) {
    uv_close((uv_handle_t *)&p->drain_timer, on_drain_timer_closed);
    return;
  }
  if (p->handles > 0)
    return;
  void (*done)(void *) = p->drain_done;
  void *arg = p->drain_arg;
  sg_resolver_close(p->resolver);
  backends_free(p);
  while (p->nspare)
    free(p->spare[--p->nspare].b);
  free(p->rbuf);
  free(p->ubuf);
  free(p);
  if (done)
    done(arg);
}

static void pool_close_all(sg_proxy_t *p) {
  for (size_t i = 0; i < p->nbuckets; i++)
    for (backend_t *b = p->backends[i]; b; b = b->next)
      while (b->idle)
        upstream_close(b->idle);
}

static void on_drain_deadline(uv_timer_t *t) {
  sg_proxy_t *p = t->data;
  while (p->clients)
    client_close(p->clients);
}

void sg_proxy_drain(sg_proxy_t *p, uint32_t deadline_ms,
                    void (*done)(void *arg), void *arg) {
  if (p->draining)
    return;
  p->draining = 1;
  p->drain_done = done;
  p->drain_arg = arg;
  uv_timer_init(p->loop, &p->drain_timer);
  p->drain_timer.data = p;
  p->handles++;
  uv_timer_start(&p->drain_timer, on_drain_deadline, deadline_ms, 0);
  uv_close((uv_handle_t *)&p->listener, on_listener_closed);
  pool_close_all(p);
  /* Idle clients go now; busy ones when their exchange ends. */
  client_t *c = p->clients;
  while (c) {
    client_t *next = c->next;
    if (c->state == C_HEAD && c->len == c->off)
      client_close(c);
    c = next;
  }
}
