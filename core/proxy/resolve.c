#include "proxy/resolve.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns/ares_uv.h"
#include "util/sockaddr.h"

#define CACHE_MAX 4096
#define TTL_MIN_MS 1000
#define TTL_MAX_MS 300000
/* A name that does not exist is remembered this long: a client asking for
 * an unknown sandbox again and again costs one lookup a second, not one per
 * request. */
#define NEGATIVE_TTL_MS 1000
#define LOOKUP_TIMEOUT_MS 2000

typedef struct entry {
  struct entry *next;
  uint64_t expires;
  int status; /* 0, or UV_EAI_NONAME: the name does not exist */
  struct sockaddr_storage addr; /* port 0 */
  char host[];
} entry_t;

/* One caller waiting for a lookup. */
struct sg_resolve_req {
  sg_resolve_req_t *next;
  sg_resolve_cb cb;
  void *arg;
  uint16_t port;
  int cancelled;
};

/* One lookup in flight, shared by every caller asking for its name
 * meanwhile. */
typedef struct lookup {
  struct lookup *next;
  sg_resolver_t *r;
  sg_resolve_req_t *waiters;
  char host[256];
} lookup_t;

struct sg_resolver {
  uv_loop_t *loop;
  sg_ares_uv_t io;
  uv_timer_t tick;
  entry_t *cache;
  int ncache;
  lookup_t *inflight;
  int lookups;
  int refs; /* poll handles + the tick timer + 1 while open */
  int closing;
};

static void maybe_free(sg_resolver_t *r) {
  if (r->refs > 0)
    return;
  while (r->cache) {
    entry_t *e = r->cache;
    r->cache = e->next;
    free(e);
  }
  free(r);
}

static void hold(void *owner, int delta) {
  sg_resolver_t *r = owner;
  r->refs += delta;
  if (delta < 0)
    maybe_free(r);
}

static void on_tick(uv_timer_t *t) {
  sg_resolver_t *r = t->data;
  ares_process_fd(r->io.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  if (r->lookups == 0)
    uv_timer_stop(t);
}

static void set_port(struct sockaddr_storage *ss, uint16_t port) {
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = htons(port);
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static entry_t *cache_find(sg_resolver_t *r, const char *host) {
  uint64_t now = uv_now(r->loop);
  for (entry_t **pp = &r->cache; *pp;) {
    entry_t *e = *pp;
    if (e->expires <= now) {
      *pp = e->next;
      free(e);
      r->ncache--;
      continue;
    }
    if (strcmp(e->host, host) == 0)
      return e;
    pp = &e->next;
  }
  return NULL;
}

static void cache_put(sg_resolver_t *r, const char *host, int status,
                      const struct sockaddr_storage *ss, uint64_t ttl_ms) {
  if (r->ncache >= CACHE_MAX)
    return;
  size_t n = strlen(host) + 1;
  entry_t *e = malloc(sizeof(*e) + n);
  if (!e)
    return;
  memcpy(e->host, host, n);
  e->status = status;
  if (ss)
    e->addr = *ss;
  else
    memset(&e->addr, 0, sizeof(e->addr));
  e->expires = uv_now(r->loop) + ttl_ms;
  e->next = r->cache;
  r->cache = e;
  r->ncache++;
}

static void on_resolved(void *arg, int status, int timeouts,
                        struct ares_addrinfo *res) {
  (void)timeouts;
  lookup_t *l = arg;
  sg_resolver_t *r = l->r;
  r->lookups--;
  struct sockaddr_storage ss;
  int found = 0;
  uint64_t ttl_ms = TTL_MIN_MS;
  if (status == ARES_SUCCESS && res) {
    for (struct ares_addrinfo_node *n = res->nodes; n; n = n->ai_next) {
      if ((n->ai_family != AF_INET && n->ai_family != AF_INET6) ||
          n->ai_addrlen > sizeof(ss))
        continue;
      memset(&ss, 0, sizeof(ss));
      memcpy(&ss, n->ai_addr, n->ai_addrlen);
      ttl_ms = (uint64_t)(n->ai_ttl > 0 ? n->ai_ttl : 0) * 1000;
      found = 1;
      break;
    }
  }
  ares_freeaddrinfo(res);
  int rc = 0;
  if (found) {
    if (ttl_ms < TTL_MIN_MS)
      ttl_ms = TTL_MIN_MS;
    if (ttl_ms > TTL_MAX_MS)
      ttl_ms = TTL_MAX_MS;
    set_port(&ss, 0);
  } else if (status == ARES_SUCCESS || status == ARES_ENOTFOUND ||
             status == ARES_ENODATA) {
    rc = UV_EAI_NONAME; /* the name has no address */
    ttl_ms = NEGATIVE_TTL_MS;
  } else {
    rc = UV_EAI_FAIL; /* no answer, SERVFAIL, refused: not remembered */
  }
  /* The name had no entry when this lookup started, and no other lookup
   * for it runs meanwhile (callers join this one). */
  if (rc != UV_EAI_FAIL && !r->closing)
    cache_put(r, l->host, rc, found ? &ss : NULL, ttl_ms);
  /* Out of the list first: a callback may ask for the name again. */
  for (lookup_t **pp = &r->inflight; *pp; pp = &(*pp)->next)
    if (*pp == l) {
      *pp = l->next;
      break;
    }
  sg_resolve_req_t *w = l->waiters;
  while (w) {
    sg_resolve_req_t *next = w->next;
    if (!w->cancelled) {
      if (found)
        set_port(&ss, w->port);
      w->cb(w->arg, rc, found ? &ss : NULL);
    }
    free(w);
    w = next;
  }
  free(l);
  r->refs--;
  maybe_free(r);
}

int sg_resolve(sg_resolver_t *r, const char *host, uint16_t port,
               struct sockaddr_storage *addr, sg_resolve_cb cb, void *arg,
               sg_resolve_req_t **req) {
  char perr[64];
  if (sg_sockaddr_parse(host, port, addr, perr, sizeof(perr)) == 0)
    return 0;
  if (r->closing)
    return UV_ECANCELED;
  entry_t *e = cache_find(r, host);
  if (e) {
    if (e->status)
      return e->status;
    *addr = e->addr;
    set_port(addr, port);
    return 0;
  }
  size_t hl = strlen(host);
  if (hl >= sizeof(((lookup_t *)0)->host))
    return UV_EINVAL;
  sg_resolve_req_t *w = calloc(1, sizeof(*w));
  if (!w)
    return UV_ENOMEM;
  w->cb = cb;
  w->arg = arg;
  w->port = port;
  lookup_t *l = r->inflight;
  while (l && strcmp(l->host, host) != 0)
    l = l->next;
  if (l) { /* asked already: wait for that answer */
    w->next = l->waiters;
    l->waiters = w;
    *req = w;
    return 1;
  }
  l = calloc(1, sizeof(*l));
  if (!l) {
    free(w);
    return UV_ENOMEM;
  }
  l->r = r;
  l->waiters = w;
  memcpy(l->host, host, hl + 1);
  l->next = r->inflight;
  r->inflight = l;
  struct ares_addrinfo_hints hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->lookups++;
  r->refs++;
  *req = w;
  if (!uv_is_active((uv_handle_t *)&r->tick))
    uv_timer_start(&r->tick, on_tick, 100, 100);
  ares_getaddrinfo(r->io.ch, host, NULL, &hints, on_resolved, l);
  return 1;
}

void sg_resolve_cancel(sg_resolve_req_t *req) {
  if (req)
    req->cancelled = 1;
}

int sg_resolver_new(uv_loop_t *loop, sg_resolver_t **out, char *err,
                    size_t errlen) {
  int rc = sg_ares_uv_library_init(err, errlen);
  if (rc)
    return rc;
  sg_resolver_t *r = calloc(1, sizeof(*r));
  if (!r) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  r->loop = loop;
  sg_ares_uv_init(&r->io, loop, hold, r);
  struct ares_options o;
  memset(&o, 0, sizeof(o));
  o.timeout = LOOKUP_TIMEOUT_MS;
  o.tries = 2;
  o.sock_state_cb = sg_ares_uv_sock_state;
  o.sock_state_cb_data = &r->io;
  rc = ares_init_options(&r->io.ch, &o,
                         ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                             ARES_OPT_SOCK_STATE_CB);
  if (rc != ARES_SUCCESS) {
    snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
    free(r);
    return -EINVAL;
  }
  uv_timer_init(loop, &r->tick);
  r->tick.data = r;
  r->refs = 2; /* open + the tick timer */
  *out = r;
  return 0;
}

static void on_tick_closed(uv_handle_t *h) {
  sg_resolver_t *r = h->data;
  r->refs--;
  maybe_free(r);
}

void sg_resolver_close(sg_resolver_t *r) {
  if (!r || r->closing)
    return;
  r->closing = 1;
  r->refs++;
  /* Fails every lookup in flight (callbacks with ARES_EDESTRUCTION). */
  ares_destroy(r->io.ch);
  uv_close((uv_handle_t *)&r->tick, on_tick_closed);
  r->refs -= 2; /* the hold above and "open" */
  maybe_free(r);
}
